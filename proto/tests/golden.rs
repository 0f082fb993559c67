//! Golden bytes: the exact encoding of every message variant, as written in `doc/PROTOCOL.md`.
//!
//! If one of these fails, the wire changed: that is a protocol break, not a test to update. New
//! variants get new golden entries; existing entries never change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test fails"
)]

use heapless::Vec;
use inferd_proto::*;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<std::vec::Vec<_>>()
        .join(" ")
}

/// Encodes `msg` as a frame, checks the hex, then decodes the body back and compares.
fn golden<'a, T>(msg: &T, expected_hex: &str, buf: &'a mut [u8])
where
    T: serde::Serialize + serde::Deserialize<'a> + PartialEq + std::fmt::Debug,
{
    let frame = encode_frame(msg, buf).expect("encodes");
    let got = hex(frame);
    assert_eq!(got, expected_hex, "encoding of {msg:?} changed");
    let len = frame.len();
    let body: &'a [u8] = &buf[HEADER_LEN..len];
    let back: T = decode_body(body).expect("decodes");
    assert_eq!(&back, msg);
}

fn shape(dims: &[u64]) -> Vec<u64, MAX_RANK> {
    Vec::from_slice(dims).unwrap()
}

#[test]
fn requests() {
    let mut buf = [0u8; 256];
    golden(
        &Request::Hello(Hello {
            min_version: 1,
            max_version: 1,
            client: "c",
        }),
        "49 4e 46 44 01 00 00 00 05 00 00 00 00 01 01 01 63",
        &mut buf,
    );
    let data = [0u8, 0, 128, 63, 0, 0, 0, 64]; // [1.0f32, 2.0f32]
    let mut inputs = Vec::new();
    inputs
        .push(Tensor {
            name: "x",
            dtype: DType::F32,
            shape: shape(&[1, 2]),
            data: &data,
        })
        .unwrap();
    golden(
        &Request::Infer(InferRequest { id: 7, model: "m", version: Some(2), deadline_ms: None, inputs }),
        "49 4e 46 44 01 00 00 00 17 00 00 00 01 07 01 6d 01 02 00 01 01 78 00 02 01 02 08 00 00 80 3f 00 00 00 40",
        &mut buf,
    );
    golden(
        &Request::ListModels { id: 300 },
        "49 4e 46 44 01 00 00 00 03 00 00 00 02 ac 02",
        &mut buf,
    );
    golden(
        &Request::ModelInfo(ModelInfoRequest {
            id: 1,
            model: "m",
            version: None,
        }),
        "49 4e 46 44 01 00 00 00 05 00 00 00 03 01 01 6d 00",
        &mut buf,
    );
    golden(
        &Request::Ping { id: 9 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 04 09",
        &mut buf,
    );
    golden(
        &Request::Reload { id: 9 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 05 09",
        &mut buf,
    );
    golden(
        &Request::Cancel { id: 9 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 06 09",
        &mut buf,
    );
    // The bytes a TCP load balancer's health check sends after Hello (doc/OPERATIONS.md).
    golden(
        &Request::Health { id: 1 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 07 01",
        &mut buf,
    );
    golden(
        &Request::Stats { id: 9 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 08 09",
        &mut buf,
    );
}

#[test]
fn responses() {
    let mut buf = [0u8; 256];
    golden(
        &Response::Welcome(Welcome {
            version: 1,
            server: "s",
            limits: Limits {
                max_frame_bytes: 4096,
                max_in_flight: 64,
                idle_timeout_ms: 1000,
            },
        }),
        "49 4e 46 44 01 00 00 00 09 00 00 00 00 01 01 73 80 20 40 e8 07",
        &mut buf,
    );
    let data = [5u8, 0, 0, 0, 0, 0, 0, 0]; // [5i64]
    let mut outputs = Vec::new();
    outputs
        .push(Tensor {
            name: "y",
            dtype: DType::I64,
            shape: shape(&[1]),
            data: &data,
        })
        .unwrap();
    golden(
        &Response::InferResult(InferResponse { id: 7, model: "m", version: 2, outputs }),
        "49 4e 46 44 01 00 00 00 14 00 00 00 01 07 01 6d 02 01 01 79 06 01 01 08 05 00 00 00 00 00 00 00",
        &mut buf,
    );
    golden(
        &Response::Error(ErrorResponse {
            id: Some(7),
            code: ErrorCode::UNKNOWN_MODEL,
            message: "no",
            retry_after_ms: None,
        }),
        "49 4e 46 44 01 00 00 00 08 00 00 00 02 01 07 0a 02 6e 6f 00",
        &mut buf,
    );
    golden(
        &Response::Error(ErrorResponse {
            id: None,
            code: ErrorCode::FRAME_TOO_LARGE,
            message: "",
            retry_after_ms: None,
        }),
        "49 4e 46 44 01 00 00 00 05 00 00 00 02 00 03 00 00",
        &mut buf,
    );
    golden(
        &Response::Error(ErrorResponse {
            id: Some(3),
            code: ErrorCode::OVERLOADED,
            message: "",
            retry_after_ms: Some(300),
        }),
        "49 4e 46 44 01 00 00 00 08 00 00 00 02 01 03 14 00 01 ac 02",
        &mut buf,
    );
    let mut models = Vec::new();
    models
        .push(ModelEntry {
            name: "m",
            version: 1,
        })
        .unwrap();
    golden(
        &Response::Models(ModelList {
            id: 3,
            models,
            truncated: false,
        }),
        "49 4e 46 44 01 00 00 00 07 00 00 00 03 03 01 01 6d 01 00",
        &mut buf,
    );
    let mut inputs = Vec::new();
    let mut dims = Vec::new();
    dims.push(Dim::Symbol("N")).unwrap();
    dims.push(Dim::Fixed(64)).unwrap();
    inputs
        .push(TensorInfo {
            name: "X",
            dtype: DType::F32,
            shape: dims,
        })
        .unwrap();
    let mut outputs = Vec::new();
    outputs
        .push(TensorInfo {
            name: "p",
            dtype: DType::Bool,
            shape: Vec::new(),
        })
        .unwrap();
    golden(
        &Response::ModelInfo(ModelInfo {
            id: 4,
            name: "m",
            version: 1,
            batch_axis: Some(0),
            description: "d",
            inputs,
            outputs,
        }),
        "49 4e 46 44 01 00 00 00 18 00 00 00 04 04 01 6d 01 01 00 01 64 01 01 58 00 02 01 01 4e 00 40 01 01 70 0b 00",
        &mut buf,
    );
    golden(
        &Response::Pong { id: 9 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 05 09",
        &mut buf,
    );
    golden(
        &Response::Done { id: 9 },
        "49 4e 46 44 01 00 00 00 02 00 00 00 06 09",
        &mut buf,
    );
    // What a load balancer's health check expects of a ready server, and what it must not accept.
    golden(
        &Response::Health {
            id: 1,
            state: ServingState::Ready,
        },
        "49 4e 46 44 01 00 00 00 03 00 00 00 07 01 00",
        &mut buf,
    );
    golden(
        &Response::Health {
            id: 1,
            state: ServingState::Draining,
        },
        "49 4e 46 44 01 00 00 00 03 00 00 00 07 01 02",
        &mut buf,
    );
    let mut latency = Vec::new();
    for n in [1u64, 2, 300] {
        latency.push(n).unwrap();
    }
    let mut models = Vec::new();
    models
        .push(ModelStats {
            name: "m",
            version: 1,
            ok: 300,
            errors: 2,
            queued: 0,
            in_flight: 1,
            latency,
            latency_sum_us: 1000,
        })
        .unwrap();
    golden(
        &Response::Stats(StatsReport {
            id: 9,
            uptime_ms: 5,
            state: ServingState::Ready,
            connections: 1,
            models,
            truncated: false,
        }),
        "49 4e 46 44 01 00 00 00 16 00 00 00 08 09 05 00 01 01 01 6d 01 ac 02 02 00 01 03 01 02 ac 02 e8 07 00",
        &mut buf,
    );
}

#[test]
fn every_dtype_index_is_pinned() {
    // dtype indices are the postcard variant indices: append-only.
    let mut buf = [0u8; 8];
    for (index, dtype) in DType::ALL.iter().enumerate() {
        let used = postcard::to_slice(dtype, &mut buf).unwrap();
        assert_eq!(used, &[index as u8], "{dtype:?}");
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let body = [4u8, 9, 0];
    assert_eq!(
        decode_body::<Request>(&body),
        Err(DecodeError::TrailingBytes(1))
    );
    assert_eq!(
        decode_body::<Request>(&body[..2]),
        Ok(Request::Ping { id: 9 })
    );
}

#[test]
fn bounded_lists_refuse_too_many_items() {
    // An Infer whose input count varint says 17 (> MAX_TENSORS) must fail, not allocate.
    let body = [1u8, 1, 1, b'm', 0, 0, 17];
    assert_eq!(decode_body::<Request>(&body), Err(DecodeError::Invalid));
}

#[test]
fn unknown_variant_is_invalid() {
    assert_eq!(decode_body::<Request>(&[99]), Err(DecodeError::Invalid));
}
