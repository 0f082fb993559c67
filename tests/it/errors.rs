//! Every class of bad input gets its own error code; framing errors close only that connection; request
//! errors do not close it; other clients never notice.

use std::time::Duration;

use inferd::client::{BlockingClient, ClientOptions};
use inferd::proto::{ErrorCode, FrameHeader, Hello, Request, HEADER_LEN};
use inferd::tensor::HostTensor;

use crate::harness::{digits_input, eventually, npy, TestServer};
use crate::raw::{Got, Raw};

/// A well-formed digits request on `raw` is answered with the reference label.
fn assert_good_request(raw: &mut Raw, id: u32) {
    raw.infer(id, "digits-mlp", &[digits_input()]);
    match raw.recv() {
        Some(Got::Result { id: got, outputs }) => {
            assert_eq!(got, id);
            let want = npy("models/digits-mlp/1/reference/label.npy", "label");
            assert_eq!(outputs[0].data, want.data);
        }
        other => panic!("expected a result, got {other:?}"),
    }
}

/// A fresh client is served normally.
fn assert_serves(server: &TestServer) {
    let mut raw = Raw::ready(server.addr);
    assert_good_request(&mut raw, 1);
}

/// The next frame is an error `code` for request `id`; its retry-after hint.
pub fn expect_error(raw: &mut Raw, id: u32, code: ErrorCode) -> Option<u32> {
    match raw.recv() {
        Some(Got::Error {
            id: got,
            code: c,
            message,
            retry_after_ms,
        }) => {
            assert_eq!((got, c), (Some(id), code), "{message}");
            assert!(!message.is_empty());
            retry_after_ms
        }
        other => panic!("expected {code} for request {id}, got {other:?}"),
    }
}

#[test]
fn request_errors_have_their_codes_and_keep_the_connection() {
    let server = TestServer::start();
    let mut raw = Raw::ready(server.addr);
    let x = digits_input();

    raw.infer(1, "no-such-model", std::slice::from_ref(&x));
    expect_error(&mut raw, 1, ErrorCode::UNKNOWN_MODEL);

    raw.infer_with(2, "digits-mlp", Some(99), None, std::slice::from_ref(&x));
    expect_error(&mut raw, 2, ErrorCode::UNKNOWN_VERSION);

    let renamed = HostTensor {
        name: "Y".into(),
        ..x.clone()
    };
    raw.infer(3, "digits-mlp", &[renamed]);
    expect_error(&mut raw, 3, ErrorCode::WRONG_INPUT_NAME);

    raw.infer(
        4,
        "digits-mlp",
        &[
            x.clone(),
            HostTensor {
                name: "extra".into(),
                ..x.clone()
            },
        ],
    );
    expect_error(&mut raw, 4, ErrorCode::WRONG_INPUT_COUNT);
    raw.infer(5, "digits-mlp", &[]);
    expect_error(&mut raw, 5, ErrorCode::WRONG_INPUT_COUNT);

    let as_i32 = HostTensor {
        dtype: inferd::proto::DType::I32,
        ..x.clone()
    };
    raw.infer(6, "digits-mlp", &[as_i32]);
    expect_error(&mut raw, 6, ErrorCode::WRONG_DTYPE);

    let reshaped = HostTensor {
        shape: vec![2, 32],
        ..x.clone()
    };
    raw.infer(7, "digits-mlp", &[reshaped]);
    expect_error(&mut raw, 7, ErrorCode::WRONG_SHAPE);

    let mut short = x.clone();
    short.data.truncate(short.data.len() - 4);
    raw.infer(8, "digits-mlp", &[short]);
    expect_error(&mut raw, 8, ErrorCode::BAD_TENSOR_DATA);

    raw.infer_with(9, "digits-mlp", None, Some(0), std::slice::from_ref(&x));
    expect_error(&mut raw, 9, ErrorCode::DEADLINE_EXCEEDED);

    // The same connection still works.
    assert_good_request(&mut raw, 10);
}

/// Rows in the batch that keeps the single worker busy: about 3 MB of input (under the 4 MiB frame
/// limit) and tens of milliseconds of compute, against well under a millisecond to send the small
/// requests that a test then queues behind it.
pub const SLOW_ROWS: usize = 12_000;

/// One digits-mlp input of `SLOW_ROWS` rows.
pub fn slow_batch() -> HostTensor {
    let row = digits_input();
    let mut batch = row.clone();
    batch.shape = vec![SLOW_ROWS as u64, 64];
    batch.data = row.data.repeat(SLOW_ROWS);
    batch
}

/// Occupies the single worker with one large digits batch on a connection of its own, and waits until
/// the worker has taken it: the request is admitted before the ping behind it is answered, and then the
/// queue is seen empty.
pub fn occupy_worker(server: &TestServer) -> Raw {
    let executions = server.handle.scheduler_stats().executions;
    let mut blocker = Raw::ready(server.addr);
    blocker.infer(0, "digits-mlp", &[slow_batch()]);
    blocker.send(&inferd::proto::Request::Ping { id: 99 });
    assert_eq!(blocker.recv(), Some(Got::Other(Some(99))));
    // Taken off the queue and counted as running (the worker counts it just after taking it), so
    // that callers' execution counts start after the blocker's.
    eventually("the worker never took the job", || {
        server.handle.queued() == 0 && server.handle.scheduler_stats().executions > executions
    });
    blocker
}

/// The blocker's one answer: the batch's result.
pub fn release(blocker: &mut Raw) {
    assert!(matches!(blocker.recv(), Some(Got::Result { id: 0, .. })));
}

#[test]
fn duplicate_ids_and_the_in_flight_cap() {
    let server = TestServer::with(|c| {
        c.max_in_flight = 2;
        c.workers = 1;
    });
    let mut blocker = occupy_worker(&server);
    let mut raw = Raw::ready(server.addr);
    let x = digits_input();
    raw.infer(1, "digits-mlp", std::slice::from_ref(&x));
    raw.infer(1, "digits-mlp", std::slice::from_ref(&x));
    raw.infer(2, "digits-mlp", std::slice::from_ref(&x));
    raw.infer(3, "digits-mlp", std::slice::from_ref(&x));
    // Refusals come at once, ahead of the results queued behind the blocker.
    expect_error(&mut raw, 1, ErrorCode::DUPLICATE_REQUEST_ID);
    expect_error(&mut raw, 3, ErrorCode::TOO_MANY_IN_FLIGHT);
    let mut ids: Vec<u32> = (0..2)
        .map(|_| match raw.recv() {
            Some(Got::Result { id, .. }) => id,
            other => panic!("expected a result, got {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    release(&mut blocker);
    assert_good_request(&mut raw, 4);
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let server = TestServer::with(|c| {
        c.workers = 1;
        c.queue_capacity = 4;
    });
    let mut blocker = occupy_worker(&server);
    // The worker is busy: four requests fill the queue, the next six are refused at once, ahead of
    // any result.
    let mut raw = Raw::ready(server.addr);
    for id in 1..=10 {
        raw.infer(id, "digits-mlp", &[digits_input()]);
    }
    for id in 5..=10 {
        let hint = expect_error(&mut raw, id, ErrorCode::OVERLOADED);
        // Four queued ahead, at the measured service time of digits-mlp: at least the 1 ms floor.
        assert!(hint.is_some_and(|ms| ms >= 1), "retry-after hint: {hint:?}");
    }
    release(&mut blocker);
    let mut served: Vec<u32> = (0..4)
        .map(|_| match raw.recv() {
            Some(Got::Result { id, .. }) => id,
            other => panic!("expected a result, got {other:?}"),
        })
        .collect();
    served.sort_unstable();
    assert_eq!(served, vec![1, 2, 3, 4], "the queued requests are served");
    assert_good_request(&mut raw, 11);
}

#[test]
fn framing_errors_close_only_that_connection() {
    let server = TestServer::with(|c| c.max_frame_bytes = 1 << 20);
    let bystander = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();

    // Oversize frame: refused on the header alone.
    let mut raw = Raw::ready(server.addr);
    raw.send_bytes(&FrameHeader::new((1 << 20) + 1).encode());
    raw.expect_fatal(ErrorCode::FRAME_TOO_LARGE);

    // Bad magic.
    let mut raw = Raw::ready(server.addr);
    raw.send_bytes(b"GET / HTTP/1.1\r\n\r\n");
    raw.expect_fatal(ErrorCode::MALFORMED_HEADER);

    // Reserved flag bits.
    let mut raw = Raw::ready(server.addr);
    let mut header = FrameHeader::new(2).encode();
    header[5] = 0x80;
    raw.send_bytes(&header);
    raw.expect_fatal(ErrorCode::MALFORMED_HEADER);

    // Unsupported version byte in the header.
    let mut raw = Raw::ready(server.addr);
    let mut header = FrameHeader::new(2).encode();
    header[4] = 2;
    raw.send_bytes(&header);
    raw.expect_fatal(ErrorCode::UNSUPPORTED_VERSION);

    // Malformed body: an unknown message index.
    let mut raw = Raw::ready(server.addr);
    raw.send_body(&[200, 1]);
    raw.expect_fatal(ErrorCode::MALFORMED_BODY);

    // Trailing bytes after a valid Ping.
    let mut raw = Raw::ready(server.addr);
    raw.send_body(&[4, 9, 0]);
    raw.expect_fatal(ErrorCode::MALFORMED_BODY);

    // A tensor list longer than the protocol allows is refused without allocating.
    let mut raw = Raw::ready(server.addr);
    raw.send_body(&[1, 1, 1, b'm', 0, 0, 200, 1]);
    raw.expect_fatal(ErrorCode::MALFORMED_BODY);

    // A second Hello.
    let mut raw = Raw::ready(server.addr);
    raw.send(&Request::Hello(Hello {
        min_version: 1,
        max_version: 1,
        client: "again",
    }));
    raw.expect_fatal(ErrorCode::UNEXPECTED_MESSAGE);

    // The bystander and new clients never noticed.
    bystander.ping().unwrap();
    assert_eq!(
        bystander
            .infer("digits-mlp", None, &[digits_input()], None)
            .unwrap()
            .version,
        1
    );
    assert_serves(&server);
}

#[test]
fn handshake_errors() {
    let server = TestServer::start();
    // A request before Hello.
    let mut raw = Raw::connect(server.addr);
    raw.send(&Request::Ping { id: 1 });
    raw.expect_fatal(ErrorCode::UNEXPECTED_MESSAGE);
    // A client that only speaks version 2.
    let mut raw = Raw::connect(server.addr);
    raw.send(&Request::Hello(Hello {
        min_version: 2,
        max_version: 3,
        client: "future",
    }));
    raw.expect_fatal(ErrorCode::UNSUPPORTED_VERSION);
    assert_serves(&server);
}

#[test]
fn timeouts_close_silent_and_slow_peers() {
    let server = TestServer::with(|c| {
        c.handshake_timeout = Duration::from_millis(200);
        c.idle_timeout_ms = 300;
        c.frame_timeout = Duration::from_millis(200);
    });
    // Connects but never says hello.
    let mut raw = Raw::connect(server.addr);
    raw.expect_fatal(ErrorCode::TIMEOUT);
    // Says hello, then nothing.
    let mut raw = Raw::ready(server.addr);
    raw.expect_fatal(ErrorCode::TIMEOUT);
    // Starts a frame and never finishes it.
    let mut raw = Raw::ready(server.addr);
    raw.send_bytes(&FrameHeader::new(10).encode()[..HEADER_LEN - 3]);
    raw.expect_fatal(ErrorCode::TIMEOUT);
    assert_serves(&server);
}

#[test]
fn connections_over_the_cap_are_told_why() {
    let server = TestServer::with(|c| c.max_connections = 1);
    let first = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let mut second = Raw::connect(server.addr);
    second.expect_fatal(ErrorCode::OVERLOADED);
    first.ping().unwrap();
    drop(first);
    // Once the first has gone, a new connection is accepted (the server notices the close first).
    eventually("the first connection never closed", || {
        server.handle.connections() == 0
    });
    assert_serves(&server);
}

#[test]
fn client_reports_server_codes() {
    let server = TestServer::start();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let err = client
        .infer("nope", None, &[digits_input()], None)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_MODEL));
    let err = client.model_info("digits-mlp", Some(7)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_VERSION));
    client.ping().unwrap();
}
