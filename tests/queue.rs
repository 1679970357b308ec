//! The activity queue keeps a follow-up's delay (issue 20 item 5): apalis stores start times in
//! whole seconds, and a watch due in less than a second started at once, again and again (the
//! `flipped` activity ran 55 times during its one-second settle).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use dmf_db::ActivityJob;

#[test]
fn a_job_due_in_under_a_second_does_not_start_before_its_delay() {
    let env = Env::new("queue-delay");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let db = dmf_db::Db::connect(&env.url).await.expect("control plane");
        for (i, ms) in [50u64, 300, 600, 900, 1500].into_iter().enumerate() {
            let job = ActivityJob { migration: uuid::Uuid::new_v4(), cluster: format!("c{i}"), phase: "flipped".into(), epoch: 1, nudge: 1 };
            let pushed = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
            let mut conn = db.pool().acquire().await.expect("connection");
            dmf_db::queue::push(&mut conn, &job, Duration::from_millis(ms)).await.expect("push");
            let run_at: f64 = sqlx::query_scalar("SELECT extract(epoch FROM run_at)::float8 FROM apalis.jobs WHERE idempotency_key = $1")
                .bind(job.idempotency_key())
                .fetch_one(&mut *conn)
                .await
                .expect("the job");
            let due = pushed + ms as f64 / 1000.0;
            assert!(run_at >= due - 0.001, "a job pushed to run after {ms} ms may start {:.3} s early", due - run_at);
        }
    });
}
