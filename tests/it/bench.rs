//! `inferd bench` against a real server: its JSON report and what it counts.

use std::process::Command;

use inferd::loadgen::inputs::Rng;
use serde_json::Value;

use crate::harness::TestServer;

fn bench(server: &TestServer, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args([
            "bench",
            "--addr",
            &server.addr.to_string(),
            "--json",
            "--warmup",
            "0",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn closed_loop_report() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &[
            "--model",
            "digits-mlp",
            "--duration",
            "1",
            "--concurrency",
            "2",
            "--depth",
            "2",
        ],
    );
    assert_eq!(r["mode"], "closed");
    assert!(u(&r, "ok") > 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let (p50, p99, p999, max) = (
        u(&r, "p50_us"),
        u(&r, "p99_us"),
        u(&r, "p999_us"),
        u(&r, "max_us"),
    );
    assert!(p50 > 0 && p50 <= p99 && p99 <= p999 && p999 <= max, "{r}");
    assert!(
        r["send_lag_p99_us"].is_null(),
        "no intended times in a closed loop: {r}"
    );
    let rps = r["throughput_rps"].as_f64().unwrap();
    let expected = u(&r, "ok") as f64 / r["duration_s"].as_f64().unwrap();
    assert!(
        (rps - expected).abs() < 1e-6 * expected.max(1.0),
        "{rps} vs {expected}"
    );
}

#[test]
fn open_loop_sends_exactly_the_seeded_poisson_arrivals() {
    let server = TestServer::start();
    let (rate, seed) = (300.0, 42u64);
    let r = bench(
        &server,
        &[
            "--model",
            "digits-mlp",
            "--duration",
            "1",
            "--rate",
            "300",
            "--seed",
            "42",
        ],
    );
    assert_eq!(r["mode"], "open");
    // Replay the arrival process: every arrival before the end is sent exactly once.
    let mut rng = Rng::new(seed);
    let (mut t, mut arrivals) = (0.0, 0u64);
    loop {
        t += rng.exponential(1.0 / rate);
        if t >= 1.0 {
            break;
        }
        arrivals += 1;
    }
    let errors: u64 = r["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(u(&r, "ok") + errors, arrivals, "{r}");
    assert_eq!(errors, 0, "{r}");
    // The generator's own lateness is part of each latency, so never above the largest one.
    let lag = r["send_lag_p99_us"]
        .as_u64()
        .expect("a lag figure in an open loop");
    assert!(lag <= u(&r, "max_us"), "{r}");
}

#[test]
fn errors_are_counted_by_code() {
    let server = TestServer::start();
    let input = crate::harness::input_arg("X", "models/digits-mlp/1/sample/X.npy");
    let r = bench(
        &server,
        &[
            "--model",
            "no-such-model",
            "--duration",
            "0.5",
            "--input",
            &input,
        ],
    );
    assert_eq!(u(&r, "ok"), 0);
    let unknown = r["errors"]["unknown_model"].as_u64().unwrap_or(0);
    assert!(unknown > 0, "{r}");
    assert_eq!(r["errors"].as_object().unwrap().len(), 1, "{r}");
}

#[test]
fn overload_refusals_are_timed_from_sending() {
    // One worker and room for one queued request: most of 16 in flight are refused at once.
    let server = TestServer::with(|c| {
        c.workers = 1;
        c.queue_capacity = 1;
    });
    let input = crate::harness::input_arg("x", "models/ppocr-cls/1/sample/x.npy");
    let r = bench(
        &server,
        &[
            "--model",
            "ppocr-cls",
            "--duration",
            "1",
            "--concurrency",
            "2",
            "--depth",
            "8",
            "--input",
            &input,
            "--deadline-ms",
            "10000",
        ],
    );
    assert!(u(&r, "ok") > 0, "{r}");
    assert!(r["errors"]["overloaded"].as_u64().unwrap_or(0) > 0, "{r}");
    let (p99, max) = (u(&r, "overloaded_p99_us"), u(&r, "overloaded_max_us"));
    assert!(p99 <= max, "{r}");
    assert_eq!(u(&r, "ok_after_deadline"), 0, "{r}");
}

#[test]
fn the_report_includes_the_batch_sizes_the_server_formed() {
    let server = TestServer::start();
    let metrics = server.metrics_addr.unwrap().to_string();
    let r = bench(
        &server,
        &[
            "--model",
            "digits-mlp",
            "--duration",
            "1",
            "--concurrency",
            "2",
            "--depth",
            "8",
            "--server-metrics",
            &metrics,
        ],
    );
    let b = &r["server_batch_sizes"];
    let executions = u(b, "executions");
    assert!(executions > 0, "{r}");
    // Only this run used the model on this server, and it waits for every answer: the server
    // computed exactly the requests answered.
    assert_eq!(u(b, "requests"), u(&r, "ok"), "{r}");
    let per_bucket: u64 = b["le"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_bucket, executions, "{r}");
    // With 16 requests in flight on 2 workers, some executions carry more than one request.
    assert!(u(b, "requests") > executions, "{r}");
}
