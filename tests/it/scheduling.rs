//! The scheduler: dynamic batching, deadlines, and clients that leave, checked by what was computed.

use std::time::Duration;

use inferd::proto::ErrorCode;
use inferd::scheduler::SchedulerStats;
use inferd::tensor::HostTensor;

use crate::errors::{occupy_worker, release};
use crate::harness::{digits_input, eventually, npy, ppocr_input, TestServer};
use crate::raw::{Got, Raw};

/// Waits until the scheduler has nothing queued.
fn drained(server: &TestServer) {
    eventually("the queue never drained", || server.handle.queued() == 0);
}

/// Eight different digit images (the sample, scaled), one row each.
fn variants() -> Vec<HostTensor> {
    let x = digits_input().as_f32().unwrap();
    (0..8)
        .map(|i| {
            let scaled: Vec<f32> = x.iter().map(|v| v * (1.0 - i as f32 * 0.1)).collect();
            HostTensor::from_f32("X", &[1, 64], &scaled)
        })
        .collect()
}

/// Answers by request id: each request's outputs.
type Answers = Vec<(u32, Vec<HostTensor>)>;

fn results(raw: &mut Raw, n: usize) -> Answers {
    let mut got: Answers = (0..n)
        .map(|_| match raw.recv() {
            Some(Got::Result { id, outputs }) => (id, outputs),
            other => panic!("expected a result, got {other:?}"),
        })
        .collect();
    got.sort_by_key(|(id, _)| *id);
    got
}

/// Sends each of `requests` alone, waiting for its answer, then all of them again queued behind a
/// busy worker, so that they run as a batch once it is released. Returns the lone answers, the
/// queued ones (by id, in the same order), and the scheduler's counts before the queued part (the
/// blocker's execution is counted in the after - before differences).
fn alone_then_queued(
    server: &TestServer,
    model: &str,
    requests: &[Vec<HostTensor>],
) -> (Vec<Vec<HostTensor>>, Answers, SchedulerStats) {
    let mut raw = Raw::ready(server.addr);
    let mut alone = Vec::new();
    for (i, inputs) in requests.iter().enumerate() {
        raw.infer(i as u32, model, inputs);
        alone.push(results(&mut raw, 1).remove(0).1);
    }
    let before = server.handle.scheduler_stats();
    let mut blocker = occupy_worker(server);
    for (i, inputs) in requests.iter().enumerate() {
        raw.infer(100 + i as u32, model, inputs);
    }
    eventually("the requests never queued", || {
        server.handle.queued() >= requests.len()
    });
    release(&mut blocker);
    (alone, results(&mut raw, requests.len()), before)
}

#[test]
fn queued_requests_run_as_one_batch_with_the_same_outputs() {
    let server = TestServer::with(|c| c.workers = 1);
    let requests: Vec<Vec<HostTensor>> = variants().into_iter().map(|x| vec![x]).collect();
    // Alone: one at a time, nothing else queued; then the same eight queued, run together.
    let (alone, batched, before) = alone_then_queued(&server, "digits-mlp", &requests);
    assert_eq!(before.batches, 0);
    let after = server.handle.scheduler_stats();
    assert_eq!(
        after.executions - before.executions,
        2,
        "the blocker, then one execution for all eight"
    );
    assert_eq!(after.batches - before.batches, 1);
    assert_eq!(after.computed - before.computed, 9);
    for ((id, outputs), single) in batched.iter().zip(&alone) {
        assert_eq!(outputs[0].shape, vec![1], "request {id}: its own row only");
        assert_eq!(outputs[0].data, single[0].data, "request {id}: same label");
        assert_eq!(outputs[1].shape, vec![1, 10]);
        // tract multiplies one row (GEMV) and several rows (GEMM) with different kernels, which add
        // in different orders: the probabilities may differ in their last bits, never more.
        let (got, want) = (outputs[1].as_f32().unwrap(), single[1].as_f32().unwrap());
        for (g, w) in got.iter().zip(&want) {
            let ulps = (i64::from(g.to_bits()) - i64::from(w.to_bits())).abs();
            assert!(ulps <= 4, "request {id}: {g} vs {w} ({ulps} ulps apart)");
        }
    }
}

/// Six voice streams for Silero VAD: the sample chunk and state, then five others (the chunk
/// shifted and scaled, the state scaled and alternately sign-flipped), so that rows mixed up
/// between streams would change the answers.
fn streams() -> Vec<Vec<HostTensor>> {
    let audio = npy("models/silero-vad/1/sample/input.npy", "input")
        .as_f32()
        .unwrap();
    let state = npy("models/silero-vad/1/sample/state.npy", "state")
        .as_f32()
        .unwrap();
    (0..6)
        .map(|s| {
            let a: Vec<f32> = (0..audio.len())
                .map(|i| audio[(i + 37 * s) % audio.len()] * (1.0 - s as f32 * 0.12))
                .collect();
            // Stream 0 is the sample itself; the others carry a scaled, alternately flipped state.
            let scale = match s {
                0 => 1.0,
                s if s % 2 == 0 => s as f32 * 0.2,
                s => -(s as f32) * 0.2,
            };
            let st: Vec<f32> = state.iter().map(|v| v * scale).collect();
            vec![
                HostTensor::from_f32("input", &[1, 576], &a),
                HostTensor::from_f32("state", &[2, 1, 128], &st),
            ]
        })
        .collect()
}

#[test]
fn voice_streams_batch_along_their_state_axis_with_the_same_outputs() {
    let server = TestServer::with(|c| c.workers = 1);
    let streams = streams();

    // Alone: one at a time (the model's single-row plan, where it has one); then queued, one
    // execution of 6 rows, the states stacked on axis 1 ([2, 6, 128]) and the next ones split back.
    let (alone, batched, before) = alone_then_queued(&server, "silero-vad", &streams);
    let after = server.handle.scheduler_stats();
    assert_eq!(
        after.executions - before.executions,
        2,
        "the blocker, then one for all six"
    );
    assert_eq!(after.batches - before.batches, 1);

    let mut probabilities = Vec::new();
    for ((id, outputs), single) in batched.iter().zip(&alone) {
        assert_eq!(
            outputs[0].shape,
            vec![1, 1],
            "request {id}: its own probability"
        );
        assert_eq!(
            outputs[1].shape,
            vec![2, 1, 128],
            "request {id}: its own next state"
        );
        for (o, name) in [(0, "probability"), (1, "next state")] {
            let (got, want) = (outputs[o].as_f32().unwrap(), single[o].as_f32().unwrap());
            for (g, w) in got.iter().zip(&want) {
                // Two plans (N symbolic, N = 1) may pick different kernels: last bits only.
                assert!((g - w).abs() <= 1e-5, "request {id}, {name}: {g} vs {w}");
            }
        }
        probabilities.push(outputs[0].as_f32().unwrap()[0]);
    }
    // The streams really differ, so a row answered for another stream would have been caught.
    probabilities.sort_by(f32::total_cmp);
    probabilities.dedup_by(|a, b| (*a - *b).abs() < 1e-4);
    assert!(
        probabilities.len() >= 4,
        "streams too alike: {probabilities:?}"
    );

    // The sample stream, batched, still matches onnxruntime's reference.
    let reference = npy("models/silero-vad/1/reference/output.npy", "output")
        .as_f32()
        .unwrap();
    let first = batched[0].1[0].as_f32().unwrap();
    assert!(
        (first[0] - reference[0]).abs() <= 1e-4,
        "{first:?} vs {reference:?}"
    );
}

#[test]
fn models_without_a_batch_axis_run_one_by_one() {
    let server = TestServer::with(|c| c.workers = 1);
    let mut blocker = occupy_worker(&server);
    let mut raw = Raw::ready(server.addr);
    for id in 0..3 {
        raw.infer(id, "ppocr-cls", &[ppocr_input()]);
    }
    let before = server.handle.scheduler_stats();
    release(&mut blocker);
    results(&mut raw, 3);
    let after = server.handle.scheduler_stats();
    // (The blocker was counted when it started, before `before`.)
    assert_eq!(after.executions - before.executions, 3, "three single runs");
    assert_eq!(after.batches, before.batches);
}

#[test]
fn expired_requests_are_answered_and_never_computed() {
    let server = TestServer::with(|c| c.workers = 1);
    let mut blocker = occupy_worker(&server);
    let mut raw = Raw::ready(server.addr);
    // Read before sending: a request may be refused at admission (the 0 ms one always is) before
    // this thread runs again. The blocker was counted when it started.
    let before = server.handle.scheduler_stats();
    // 1 ms: long expired when the worker frees up.
    raw.infer_with(1, "digits-mlp", None, Some(1), &[digits_input()]);
    raw.infer_with(2, "digits-mlp", None, Some(0), &[digits_input()]);
    release(&mut blocker);
    for _ in 0..2 {
        match raw.recv() {
            Some(Got::Error {
                code: ErrorCode::DEADLINE_EXCEEDED,
                ..
            }) => {}
            other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
        }
    }
    let after = server.handle.scheduler_stats();
    assert_eq!(
        after.executions, before.executions,
        "nothing ran after the blocker"
    );
    assert_eq!(after.expired - before.expired, 2);
}

#[test]
fn the_deadline_counts_from_the_first_byte_of_the_request() {
    let server = TestServer::start();
    let mut raw = Raw::ready(server.addr);
    // Half a frame, a pause longer than the deadline, then the rest: the request's time on the
    // wire counts, as it does for the client.
    let send_slowly = |raw: &mut Raw, id: u32, deadline_ms: u32| {
        let frame = Raw::infer_frame(id, "digits-mlp", None, Some(deadline_ms), &[digits_input()]);
        let (head, tail) = frame.split_at(frame.len() / 2);
        raw.send_bytes(head);
        std::thread::sleep(Duration::from_millis(300));
        raw.send_bytes(tail);
    };
    send_slowly(&mut raw, 1, 100);
    match raw.recv() {
        Some(Got::Error {
            id: Some(1),
            code: ErrorCode::DEADLINE_EXCEEDED,
            ..
        }) => {}
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
    // The same pause within a longer deadline is served.
    send_slowly(&mut raw, 2, 5_000);
    assert!(matches!(raw.recv(), Some(Got::Result { id: 2, .. })));
}

#[test]
fn a_request_that_could_not_finish_before_its_deadline_is_refused_and_not_run() {
    let server = TestServer::with(|c| c.workers = 1);
    // Three slow batches (tens of milliseconds each) raise digits-mlp's measured run time, a moving
    // average, far above the 1 ms deadline below.
    for _ in 0..3 {
        let mut blocker = occupy_worker(&server);
        release(&mut blocker);
    }
    drained(&server);
    let before = server.handle.scheduler_stats();
    let mut raw = Raw::ready(server.addr);
    // The worker is idle and the deadline has not passed, but a run of the model's measured
    // length would end after it: refused at once, never queued.
    raw.infer_with(1, "digits-mlp", None, Some(1), &[digits_input()]);
    match raw.recv() {
        Some(Got::Error {
            id: Some(1),
            code: ErrorCode::DEADLINE_EXCEEDED,
            message,
            ..
        }) => assert!(message.contains("measured run time"), "{message}"),
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
    let after = server.handle.scheduler_stats();
    assert_eq!(after.executions, before.executions, "nothing was run");
    assert_eq!(after.expired - before.expired, 1);
    // With time for a run, the same request is computed.
    raw.infer_with(2, "digits-mlp", None, Some(10_000), &[digits_input()]);
    assert!(matches!(raw.recv(), Some(Got::Result { id: 2, .. })));
    assert_eq!(
        server.handle.scheduler_stats().executions,
        after.executions + 1
    );
}

#[test]
fn a_deadline_must_also_leave_the_time_slice_a_frame_may_have_waited_unread() {
    // digits-mlp answers in microseconds (milliseconds while other tests load the machine): a 2 s
    // deadline leaves room for that, not for a 5 s worker time slice, during which the frame may
    // have waited unread on a shared CPU.
    for (slice, served) in [(Some(Duration::from_secs(5)), false), (None, true)] {
        let server = TestServer::with(|c| c.worker_yield = slice);
        let mut raw = Raw::ready(server.addr);
        raw.infer_with(1, "digits-mlp", None, Some(2_000), &[digits_input()]);
        match raw.recv() {
            Some(Got::Result { id: 1, .. }) if served => {}
            Some(Got::Error {
                id: Some(1),
                code: ErrorCode::DEADLINE_EXCEEDED,
                message,
                ..
            }) if !served => assert!(message.contains("time slice"), "{message}"),
            other => panic!("slice {slice:?}: got {other:?}"),
        }
    }
}

#[test]
fn a_request_the_queue_ahead_would_make_late_is_refused_overloaded_at_once() {
    let server = TestServer::with(|c| c.workers = 1);
    let mut blocker = occupy_worker(&server);
    let mut raw = Raw::ready(server.addr);
    // 40 ppocr-cls requests (each a millisecond or more, measured at warm-up) with time to spare...
    let input = ppocr_input();
    for id in 1..=40 {
        raw.infer_with(
            id,
            "ppocr-cls",
            None,
            Some(60_000),
            std::slice::from_ref(&input),
        );
    }
    // ...then one that an idle worker could finish in 10 ms, but not behind those 40.
    raw.infer_with(
        41,
        "ppocr-cls",
        None,
        Some(10),
        std::slice::from_ref(&input),
    );
    release(&mut blocker);
    let mut results = 0;
    loop {
        match raw.recv() {
            Some(Got::Result { id, .. }) if id <= 40 => results += 1,
            Some(Got::Error {
                id: Some(41),
                code: ErrorCode::OVERLOADED,
                message,
                retry_after_ms,
            }) => {
                assert!(message.contains("queued ahead"), "{message}");
                assert!(
                    retry_after_ms.is_some_and(|ms| ms >= 1),
                    "{retry_after_ms:?}"
                );
                break;
            }
            other => panic!("expected request 41 refused OVERLOADED, got {other:?}"),
        }
    }
    // Refused at admission, not after waiting behind the others.
    assert!(
        results < 40,
        "the refusal came after every queued request had run"
    );
    // The 40 with time to spare are all answered.
    for _ in results..40 {
        assert!(matches!(raw.recv(), Some(Got::Result { .. })));
    }
}

#[test]
fn a_client_that_leaves_costs_no_compute() {
    let server = TestServer::with(|c| c.workers = 1);
    let mut blocker = occupy_worker(&server);
    let mut leaver = Raw::ready(server.addr);
    for id in 0..5 {
        leaver.infer(id, "digits-mlp", &[digits_input()]);
    }
    eventually("the requests never queued", || server.handle.queued() >= 5);
    drop(leaver);
    // The server notices the close (the connection's completion channel closes) long before the
    // worker is free: the blocker takes tens of milliseconds.
    std::thread::sleep(Duration::from_millis(5));
    let before = server.handle.scheduler_stats();
    release(&mut blocker);
    drained(&server);
    // Give the worker the moment it needs after taking them off the queue.
    eventually("abandoned requests were not dropped", || {
        server.handle.scheduler_stats().abandoned - before.abandoned >= 5
    });
    let after = server.handle.scheduler_stats();
    assert_eq!(
        after.executions, before.executions,
        "nothing ran after the blocker"
    );
}

#[test]
fn cancel_takes_a_queued_request_out_without_computing_it() {
    let server = TestServer::with(|c| c.workers = 1);
    let mut blocker = occupy_worker(&server);
    let mut raw = Raw::ready(server.addr);
    for id in 1..=3 {
        raw.infer(id, "digits-mlp", &[digits_input()]);
    }
    eventually("the requests never queued", || server.handle.queued() >= 3);
    let before = server.handle.scheduler_stats();
    raw.send(&inferd::proto::Request::Cancel { id: 2 });
    // Answered at once, while the worker is still busy with the blocker.
    match raw.recv() {
        Some(Got::Error {
            id: Some(2),
            code: ErrorCode::CANCELLED,
            ..
        }) => {}
        other => panic!("expected request 2 CANCELLED, got {other:?}"),
    }
    assert_eq!(server.handle.queued(), 2);
    // Cancelling what is not in flight does nothing and is not answered: the next frame is the pong.
    raw.send(&inferd::proto::Request::Cancel { id: 77 });
    raw.send(&inferd::proto::Request::Ping { id: 78 });
    assert_eq!(raw.recv(), Some(Got::Other(Some(78))));
    release(&mut blocker);
    let ids: Vec<u32> = results(&mut raw, 2).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![1, 3]);
    let after = server.handle.scheduler_stats();
    assert_eq!(after.cancelled - before.cancelled, 1);
    assert_eq!(after.computed - before.computed, 2, "requests 1 and 3 only");
}

#[test]
fn a_client_that_stops_waiting_cancels_its_request() {
    let server = TestServer::with(|c| c.workers = 1);
    // Counted before the blocker, so that the counts do not depend on what the worker has taken
    // by the time a later count would be read.
    let before = server.handle.scheduler_stats();
    let mut blocker = occupy_worker(&server);
    // A backlog of ppocr-cls requests (~2 ms of compute each, small frames that are admitted
    // faster than they are computed) queues behind the blocker. The client below asks only once
    // at least 30 of them (~50 ms of work) are queued, so its request is still waiting when it
    // gives up after 30 ms and cancels it.
    const BACKLOG: u32 = 60;
    let mut second = Raw::ready(server.addr);
    let line = ppocr_input();
    for id in 0..BACKLOG {
        second.infer(id, "ppocr-cls", std::slice::from_ref(&line));
    }
    eventually("the backlog never queued", || server.handle.queued() >= 30);
    let options = inferd::client::ClientOptions {
        request_timeout: Duration::from_millis(30),
        ..inferd::client::ClientOptions::default()
    };
    let client = inferd::client::BlockingClient::connect(server.addr, options).unwrap();
    let err = client
        .infer("digits-mlp", None, &[digits_input()], None)
        .unwrap_err();
    assert!(matches!(err, inferd::client::ClientError::Timeout), "{err}");
    release(&mut blocker);
    for _ in 0..BACKLOG {
        let got = second.recv();
        assert!(matches!(got, Some(Got::Result { .. })), "{got:?}");
    }
    drained(&server);
    let after = server.handle.scheduler_stats();
    assert_eq!(
        after.cancelled - before.cancelled,
        1,
        "the client's Cancel took it out"
    );
    assert_eq!(
        after.computed - before.computed,
        1 + u64::from(BACKLOG),
        "only the blocker and the backlog ran, not the cancelled request"
    );
}
