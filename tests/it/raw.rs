//! A byte-level client for tests that must send what a well-behaved client never would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use inferd::proto::codec::encode_frame_vec;
use inferd::proto::{
    decode_body, ErrorCode, FrameHeader, Hello, InferRequest, Request, Response, HEADER_LEN,
    PROTOCOL_VERSION,
};
use inferd::tensor::HostTensor;

/// What a test needs to know of one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Result {
        id: u32,
        outputs: Vec<HostTensor>,
    },
    Error {
        id: Option<u32>,
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u32>,
    },
    Other(Option<u32>),
}

impl Got {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Got::Error { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    /// Connects and completes the handshake.
    pub fn ready(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&Request::Hello(Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION,
            client: "raw-test",
        }));
        let body = raw.recv_body().expect("welcome");
        assert!(matches!(
            decode_body::<Response>(&body),
            Ok(Response::Welcome(_))
        ));
        raw
    }

    pub fn send(&mut self, req: &Request<'_>) {
        let frame = encode_frame_vec(req, u32::MAX).unwrap();
        self.stream.write_all(&frame).unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a body with a correct header.
    pub fn send_body(&mut self, body: &[u8]) {
        let mut frame = FrameHeader::new(body.len() as u32).encode().to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame);
    }

    pub fn infer(&mut self, id: u32, model: &str, inputs: &[HostTensor]) {
        self.infer_with(id, model, None, None, inputs);
    }

    pub fn infer_with(
        &mut self,
        id: u32,
        model: &str,
        version: Option<u32>,
        deadline_ms: Option<u32>,
        inputs: &[HostTensor],
    ) {
        let frame = Raw::infer_frame(id, model, version, deadline_ms, inputs);
        self.send_bytes(&frame);
    }

    /// An `Infer` request's whole frame, header included.
    pub fn infer_frame(
        id: u32,
        model: &str,
        version: Option<u32>,
        deadline_ms: Option<u32>,
        inputs: &[HostTensor],
    ) -> Vec<u8> {
        let mut wire = heapless::Vec::new();
        for t in inputs {
            wire.push(t.to_wire().unwrap()).unwrap();
        }
        encode_frame_vec(
            &Request::Infer(InferRequest {
                id,
                model,
                version,
                deadline_ms,
                inputs: wire,
            }),
            u32::MAX,
        )
        .unwrap()
    }

    /// The next frame's body; `None` at end of stream.
    pub fn recv_body(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; HEADER_LEN];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        let h = FrameHeader::decode(&header, u32::MAX).expect("server frames are valid");
        let mut body = vec![0u8; h.body_len as usize];
        self.stream.read_exact(&mut body).unwrap();
        Some(body)
    }

    pub fn recv(&mut self) -> Option<Got> {
        let body = self.recv_body()?;
        let got = match decode_body::<Response>(&body).expect("server bodies decode") {
            Response::InferResult(r) => Got::Result {
                id: r.id,
                outputs: r.outputs.iter().map(HostTensor::from_wire).collect(),
            },
            Response::Error(e) => Got::Error {
                id: e.id,
                code: e.code,
                message: e.message.to_owned(),
                retry_after_ms: e.retry_after_ms,
            },
            other => Got::Other(other.id()),
        };
        Some(got)
    }

    /// Asserts that the next frame is an error with `code`, then that the server closes the connection.
    pub fn expect_fatal(&mut self, code: ErrorCode) {
        match self.recv() {
            Some(Got::Error {
                id: None,
                code: got,
                message,
                ..
            }) => assert_eq!(got, code, "{message}"),
            other => panic!("expected a connection error {code}, got {other:?}"),
        }
        assert_eq!(
            self.recv(),
            None,
            "the connection should be closed after {code}"
        );
    }
}
