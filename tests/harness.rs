//! Tests of the test harness itself: what it reads from the tools it drives must not let a failed
//! run pass.

mod common;

use common::BenchResult;

const SUMMARY: &str = "transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
number of clients: 4
number of threads: 1
duration: 10 s
number of transactions actually processed: 3120
number of failed transactions: 0 (0.000%)
latency average = 12.796 ms
tps = 311.889917 (without initial connection time)
";

#[test]
fn a_clean_pgbench_run_counts_its_transactions() {
    let r = BenchResult::parse(true, SUMMARY, "").expect("summary");
    assert_eq!((r.ok, r.processed, r.failed), (true, 3120, 0));
}

#[test]
fn aborted_clients_count_as_failures() {
    // pgbench counts an aborted client in neither "failed transactions" nor the exit code alone
    let stderr = "pgbench: error: client 2 script 0 aborted in command 5 query 0: FATAL:  terminating connection
pgbench: error: client 3 script 0 aborted in command 5 query 0: server closed the connection unexpectedly
";
    let r = BenchResult::parse(true, SUMMARY, stderr).expect("summary");
    assert_eq!(r.failed, 2, "{}", r.report);
}

#[test]
fn an_aborted_run_is_not_ok() {
    let stderr = "pgbench: error: Run was aborted; the above results are incomplete.\n";
    let r = BenchResult::parse(true, SUMMARY, stderr).expect("summary");
    assert!(!r.ok && r.failed >= 1, "{}", r.report);
}

#[test]
fn a_summary_without_the_failure_line_is_an_error() {
    let truncated: String = SUMMARY.lines().filter(|l| !l.starts_with("number of failed")).map(|l| format!("{l}\n")).collect();
    let e = BenchResult::parse(true, &truncated, "").err().expect("must not parse");
    assert!(e.contains("number of failed transactions"), "{e}");
    assert!(BenchResult::parse(false, "", "pgbench: error: connection refused\n").is_err(), "no summary at all");
}
