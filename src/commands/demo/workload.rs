//! The demo's application: pgbench-style TPC-B clients that talk to their cluster only through
//! its proxy, with prepared statements, and record every transaction's latency and every error.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What one client saw.
#[derive(Default)]
pub struct Stats {
    pub committed: i64,
    pub errors: i64,
    /// The first few error messages, for the report.
    pub error_samples: Vec<String>,
    /// (commit time in µs since the epoch, latency in µs) of every committed transaction.
    pub transactions: Vec<(i64, i64)>,
}

impl Stats {
    fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(format!("{what}: {e}"));
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.committed += other.committed;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
        self.transactions.extend(other.transactions);
    }

    /// The longest transaction that was running at any moment of `[from_us, to_us]`.
    pub fn longest_overlapping(&self, from_us: i64, to_us: i64) -> Option<i64> {
        self.transactions.iter().filter(|(end, latency)| *end >= from_us && end - latency <= to_us).map(|(_, latency)| *latency).max()
    }
}

/// A tiny xorshift generator: the demo needs spread, not quality, and no extra dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as i64
    }
}

const STATEMENTS: [&str; 5] = [
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
];

/// Run TPC-B transactions as `login` (scale `scale`), one every `pace`, until `stop`. An error
/// is counted and the client reconnects, as an application's pool would.
pub async fn client(login: tokio_postgres::Config, scale: u32, seed: u64, pace: Duration, stop: CancellationToken) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let scale = i64::from(scale.max(1));
    while !stop.is_cancelled() {
        let (client, conn) = match login.connect(tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => {
                stats.error("connect", e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let connection = tokio::spawn(conn);
        let mut prepared = Vec::with_capacity(STATEMENTS.len());
        for sql in STATEMENTS {
            match client.prepare(sql).await {
                Ok(s) => prepared.push(s),
                Err(e) => {
                    stats.error("prepare", e);
                    break;
                }
            }
        }
        while prepared.len() == STATEMENTS.len() && !stop.is_cancelled() {
            let (aid, tid, bid) = (rng.below(100_000 * scale) as i32 + 1, rng.below(10 * scale) as i32 + 1, rng.below(scale) as i32 + 1);
            let delta = rng.below(10_001) as i32 - 5000;
            let began = Instant::now();
            let txn = async {
                client.batch_execute("BEGIN").await?;
                client.execute(&prepared[0], &[&delta, &aid]).await?;
                client.query_one(&prepared[1], &[&aid]).await?;
                client.execute(&prepared[2], &[&delta, &tid]).await?;
                client.execute(&prepared[3], &[&delta, &bid]).await?;
                client.execute(&prepared[4], &[&tid, &bid, &aid, &delta]).await?;
                client.batch_execute("COMMIT").await
            };
            match txn.await {
                Ok(()) => {
                    stats.committed += 1;
                    stats.transactions.push((chrono::Utc::now().timestamp_micros(), began.elapsed().as_micros() as i64));
                }
                Err(e) => {
                    stats.error("transaction", e);
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pace) => {}
                _ = stop.cancelled() => {}
            }
        }
        drop(client);
        let _ = connection.await;
    }
    stats
}
