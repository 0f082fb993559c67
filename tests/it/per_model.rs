//! Per-model scheduling knobs from `serving.toml`: `workers`, `max_in_flight` (refused with a
//! retry-after hint), `deadline_ms`, and `max_delay_ms` (a busy model's partial batch is held, an idle
//! one never waits), checked by what was queued, computed and answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd::model::repository::Settings;
use inferd::model::Repository;
use inferd::proto::ErrorCode;

use crate::errors::{expect_error, occupy_worker, release};
use crate::harness::{digits_input, eventually, repo_root, scratch, Scratch, TestServer};
use crate::raw::{Got, Raw};

/// A repository with shipped digits-mlp as `digits-mlp` and again as `other`, `serving` being the
/// `serving.toml` of the one named `knobs`; with the folder's guard, which must outlive the
/// repository.
fn repository(tag: &str, knobs: &str, serving: &str) -> (Scratch, Arc<Repository>) {
    let root = scratch(&format!("permodel-{tag}"));
    for name in ["digits-mlp", "other"] {
        let to = root.join(name).join("1");
        std::fs::create_dir_all(to.join("sample")).unwrap();
        let from = repo_root().join("models/digits-mlp/1");
        for file in ["model.onnx", "model.toml"] {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
        for entry in std::fs::read_dir(from.join("sample")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join("sample").join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(root.join(knobs).join("serving.toml"), serving).unwrap();
    let repository = Arc::new(Repository::open(&root, Settings::default()).unwrap());
    (root, repository)
}

fn result_id(raw: &mut Raw) -> u32 {
    match raw.recv() {
        Some(Got::Result { id, .. }) => id,
        other => panic!("expected a result, got {other:?}"),
    }
}

#[test]
fn a_model_on_its_limits_is_refused_with_a_hint_and_never_crowds_out_another() {
    let (_repo, models) = repository("limits", "digits-mlp", "workers = 1\nmax_in_flight = 2\n");
    let server = TestServer::serving(models, |c| c.workers = 2);
    // One digits-mlp request runs (its one allowed worker), one more queues although the second
    // worker is free, a third is over max_in_flight.
    let mut raw = Raw::ready(server.addr);
    let mut blocker = occupy_worker(&server);
    let x = digits_input();
    raw.infer(1, "digits-mlp", std::slice::from_ref(&x));
    eventually("request 1 never queued", || server.handle.queued() == 1);
    raw.infer(2, "digits-mlp", std::slice::from_ref(&x));
    let hint = expect_error(&mut raw, 2, ErrorCode::OVERLOADED);
    assert!(hint.is_some_and(|ms| ms >= 1), "retry-after hint: {hint:?}");
    // The free worker serves another model meanwhile; digits-mlp's request is still waiting.
    raw.infer(3, "other", std::slice::from_ref(&x));
    assert_eq!(result_id(&mut raw), 3);
    assert_eq!(
        server.handle.queued(),
        1,
        "request 1 waits for its model's worker"
    );
    release(&mut blocker);
    assert_eq!(result_id(&mut raw), 1);
    // Slots free as requests finish.
    raw.infer(4, "digits-mlp", std::slice::from_ref(&x));
    assert_eq!(result_id(&mut raw), 4);
}

#[test]
fn a_models_deadline_applies_to_its_requests_and_caps_theirs() {
    let (_repo, models) = repository("deadline", "other", "deadline_ms = 1\n");
    // No worker time slice: its margin (half a millisecond by default) would leave other's 1 ms
    // deadline too little room to be admitted at all on a busy machine; this is about expiry in
    // the queue.
    let server = TestServer::serving(models, |c| {
        c.workers = 1;
        c.worker_yield = None;
    });
    let mut raw = Raw::ready(server.addr);
    let x = digits_input();
    let before = server.handle.scheduler_stats();
    // The blocker is a digits-mlp request (the daemon's 30 s deadline).
    let mut blocker = occupy_worker(&server);
    raw.infer(1, "other", std::slice::from_ref(&x));
    raw.infer_with(2, "other", None, Some(60_000), std::slice::from_ref(&x));
    raw.infer(3, "digits-mlp", std::slice::from_ref(&x));
    eventually("the requests never queued", || server.handle.queued() == 3);
    // Queued behind the blocker for longer than other's 1 ms; digits-mlp keeps the daemon's 30 s.
    release(&mut blocker);
    let mut answers: Vec<(u32, Option<ErrorCode>)> = (0..3)
        .map(|_| match raw.recv() {
            Some(Got::Result { id, .. }) => (id, None),
            Some(Got::Error {
                id: Some(id), code, ..
            }) => (id, Some(code)),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    answers.sort_unstable_by_key(|a| a.0);
    let expired = Some(ErrorCode::DEADLINE_EXCEEDED);
    assert_eq!(answers, vec![(1, expired), (2, expired), (3, None)]);
    let after = server.handle.scheduler_stats();
    assert_eq!(after.expired - before.expired, 2, "neither was computed");
}

#[test]
fn a_busy_model_holds_a_partial_batch_and_an_idle_one_never_waits() {
    let (_repo, models) = repository("delay", "digits-mlp", "max_delay_ms = 10000\n");
    let server = TestServer::serving(models, |c| c.workers = 2);
    let mut raw = Raw::ready(server.addr);
    let mut blocker = occupy_worker(&server);
    let before = server.handle.scheduler_stats();
    let x = digits_input();
    for id in 1..=4 {
        raw.infer(id, "digits-mlp", std::slice::from_ref(&x));
    }
    // A worker is free, yet the four wait: digits-mlp is busy on the other worker, so the partial
    // batch is held for more requests.
    eventually("the requests were not held", || server.handle.queued() == 4);
    release(&mut blocker);
    let mut ids: Vec<u32> = (0..4).map(|_| result_id(&mut raw)).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    let after = server.handle.scheduler_stats();
    assert_eq!(
        after.executions - before.executions,
        1,
        "one execution for all four"
    );
    assert_eq!(after.batches - before.batches, 1);
    // Nothing else running: a lone request is not held for the 10 s max_delay.
    let started = Instant::now();
    raw.infer(5, "digits-mlp", std::slice::from_ref(&x));
    assert_eq!(result_id(&mut raw), 5);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idle model waited {:?}",
        started.elapsed()
    );
}

#[cfg(feature = "intra-op-threads")]
#[test]
fn a_model_with_intra_op_threads_computes_the_same_outputs() {
    let (_repo, models) = repository("threads", "other", "threads = 2\n");
    let snapshot = models.snapshot();
    let one = snapshot.get("digits-mlp", None).unwrap();
    let two = snapshot.get("other", None).unwrap();
    assert_eq!((one.runtime.threads(), two.runtime.threads()), (1, 2));
    // Large enough for tract to split the matrix products across the pool.
    let row = digits_input();
    let mut batch = row.clone();
    batch.shape = vec![4096, 64];
    batch.data = row.data.repeat(4096);
    let a = one.runtime.run(vec![batch.clone()]).unwrap();
    let b = two.runtime.run(vec![batch]).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].shape, vec![4096]);
}

#[test]
fn new_settings_apply_at_the_next_rescan_without_a_swap() {
    let (root, models) = repository("retune", "digits-mlp", "max_in_flight = 2\n");
    let before = models.snapshot();
    assert_eq!(before.scheduling("digits-mlp").max_in_flight, Some(2));
    let swaps = models.counters().1;
    std::fs::write(
        root.join("digits-mlp/serving.toml"),
        "max_in_flight = 1\nmax_delay_ms = 2\n",
    )
    .unwrap();
    let changes = models.rescan().unwrap();
    assert!(!changes.swapped(), "{changes:?}");
    let after = models.snapshot();
    let knobs = after.scheduling("digits-mlp");
    assert_eq!(knobs.max_in_flight, Some(1));
    assert_eq!(knobs.max_delay, Duration::from_millis(2));
    // The same loaded versions serve: nothing was reloaded, and it does not count as a swap.
    assert!(Arc::ptr_eq(
        &before.get("digits-mlp", None).unwrap(),
        &after.get("digits-mlp", None).unwrap()
    ));
    assert_eq!(models.counters().1, swaps);
    // Removing the file restores the defaults, again without a swap.
    std::fs::remove_file(root.join("digits-mlp/serving.toml")).unwrap();
    assert!(!models.rescan().unwrap().swapped());
    assert_eq!(
        models.snapshot().scheduling("digits-mlp").max_in_flight,
        None
    );
    assert_eq!(models.counters().1, swaps);
}
