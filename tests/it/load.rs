//! Many requests on one connection (pipelined, answered out of order) and many clients at once.

use std::sync::Arc;

use inferd::client::{BlockingClient, Client, ClientOptions};

use crate::harness::{digits_input, npy, ppocr_input, TestServer};
use crate::raw::{Got, Raw};

#[test]
fn two_hundred_pipelined_requests_complete_out_of_order() {
    let server = TestServer::with(|c| {
        c.max_in_flight = 256;
        c.workers = 2;
    });
    let mut raw = Raw::ready(server.addr);
    let digits = digits_input();
    let ppocr = ppocr_input();
    // Every 50th request is the slow CNN; the rest are the fast MLP. All are written before any answer
    // is read.
    let slow = |id: u32| id % 50 == 0;
    for id in 0..200u32 {
        if slow(id) {
            raw.infer(id, "ppocr-cls", std::slice::from_ref(&ppocr));
        } else {
            raw.infer(id, "digits-mlp", std::slice::from_ref(&digits));
        }
    }
    let label = npy("models/digits-mlp/1/reference/label.npy", "label");
    let direction = npy(
        "models/ppocr-cls/1/reference/save_infer_model_scale_0_tmp_1.npy",
        "d",
    );
    let mut order = Vec::new();
    for _ in 0..200 {
        match raw.recv().expect("an answer for every request") {
            Got::Result { id, outputs } => {
                if slow(id) {
                    crate::models::assert_close(
                        &outputs[0],
                        &HostTensorNamed(&direction, &outputs[0].name).get(),
                        1e-4,
                        "ppocr",
                    );
                } else {
                    assert_eq!(outputs[0].data, label.data, "request {id}");
                }
                order.push(id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..200).collect::<Vec<_>>(),
        "each request answered exactly once"
    );
    let overtaken = order.windows(2).any(|w| w[0] > w[1]);
    assert!(
        overtaken,
        "responses should come back in completion order, not request order: {order:?}"
    );
}

/// The reference tensor renamed to the output's name (references are stored under file names).
struct HostTensorNamed<'a>(&'a inferd::tensor::HostTensor, &'a str);

impl HostTensorNamed<'_> {
    fn get(&self) -> inferd::tensor::HostTensor {
        inferd::tensor::HostTensor {
            name: self.1.to_owned(),
            ..self.0.clone()
        }
    }
}

#[test]
fn async_client_pipelines_on_one_connection() {
    let server = TestServer::start();
    let client = Arc::new(smol::block_on(Client::connect(server.addr)).unwrap());
    let label = npy("models/digits-mlp/1/reference/label.npy", "label");
    let x = digits_input();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let client = Arc::clone(&client);
            let x = x.clone();
            smol::spawn(async move { client.infer("digits-mlp", None, &[x], None).await })
        })
        .collect();
    for task in tasks {
        let out = smol::block_on(task).unwrap();
        assert_eq!(out.outputs[0].data, label.data);
    }
}

#[test]
fn twenty_concurrent_clients() {
    let server = TestServer::start();
    let addr = server.addr;
    let threads: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let client = BlockingClient::connect(addr, ClientOptions::default()).unwrap();
                let label = npy("models/digits-mlp/1/reference/label.npy", "label");
                let vad = npy("models/silero-vad/1/reference/output.npy", "output");
                let vad_inputs = [
                    npy("models/silero-vad/1/sample/input.npy", "input"),
                    npy("models/silero-vad/1/sample/state.npy", "state"),
                ];
                for round in 0..10 {
                    if (i + round) % 2 == 0 {
                        let out = client
                            .infer("digits-mlp", None, &[digits_input()], None)
                            .unwrap();
                        assert_eq!(out.output("label").unwrap().data, label.data);
                    } else {
                        let out = client.infer("silero-vad", None, &vad_inputs, None).unwrap();
                        let got = out.output("output").unwrap().as_f32().unwrap()[0];
                        assert!((got - vad.as_f32().unwrap()[0]).abs() < 1e-4);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}
