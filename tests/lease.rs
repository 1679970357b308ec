//! Every control-plane write an activity makes holds only while its worker holds the migration's
//! lease for that epoch: a worker that stalled past its lease, and whose migration another worker
//! took, writes nothing when it wakes up.

mod common;

use std::time::Duration;

use common::{Env, SAMPLE_SCHEMA};
use dmf_db::lease::LeaseToken;
use dmf_db::route::RouteChange;
use dmf_db::state::Patch;
use dmf_db::{Error, FollowUp, TransitionRequest};
use dmf_workflows::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_can_write_nothing() {
    let env = Env::new("lease");
    let src = env.source("src");
    env.enqueue_app(&src, SAMPLE_SCHEMA);
    let db = dmf_db::Db::connect(&env.url).await.expect("control plane");
    let m = db.migration_by_cluster("app").await.expect("migration");
    let token = |holder: &str| LeaseToken { migration: m.id, holder: holder.into(), epoch: m.epoch };
    assert!(db.acquire_lease(m.id, "stalled", m.epoch, Duration::from_millis(500)).await.expect("lease"));
    let stalled = db.leased(token("stalled"));
    stalled.merge_state(m.id, Patch::default()).await.expect("a write while the lease holds");

    // the lease runs out while "stalled" sleeps; another worker takes the migration
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(db.acquire_lease(m.id, "taker", m.epoch, Duration::from_secs(30)).await.expect("lease"));
    let route_before = db.route("app").await.expect("route").expect("a route");

    let lost = |r: Result<(), Error>, what: &str| assert!(matches!(r, Err(Error::LeaseLost { .. })), "{what}: {r:?}");
    lost(stalled.merge_state(m.id, Patch::default()).await, "state");
    let moved = stalled.change_route("app", &RouteChange { primary: Some("postgres://postgres@127.0.0.1:1/app".into()), hold: Some(false), ..Default::default() }, "stalled").await;
    lost(moved.map(|_| ()), "route");
    lost(stalled.record_lag(m.id, Some(1), Some(1), None, false).await.map(|_| ()), "lag");
    lost(stalled.record_copy_progress(m.id, "items", 0, 1, 1, false).await, "copy progress");
    let req = TransitionRequest { release_lease: Some("stalled".into()), ..TransitionRequest::new(Phase::Preflight, m.epoch, Phase::Failed, "stalled", "x") };
    lost(db.transition(m.id, &req).await.map(|_| ()), "transition");
    let again = FollowUp { phase: m.phase().expect("phase"), epoch: m.epoch, delay: Duration::ZERO, why: dmf_db::Again::Nudge, actor: "stalled", release_lease: Some("stalled") };
    lost(db.follow_up(m.id, &again).await.map(|_| ()), "follow-up");

    let route_after = db.route("app").await.expect("route").expect("a route");
    assert_eq!((route_after.route_epoch, route_after.primary_endpoint), (route_before.route_epoch, route_before.primary_endpoint), "the route never moved");
    let after = db.migration(m.id).await.expect("migration");
    assert_eq!((after.phase, after.epoch), (m.phase.clone(), m.epoch), "the migration never moved");
    // the worker that holds the lease writes
    db.leased(token("taker")).merge_state(m.id, Patch::default()).await.expect("the holder writes");
}
