//! Metrics, health and stats: the /metrics counters move by exactly what was done, readiness fails at
//! once on drain (over HTTP and over the protocol) while serving goes on until the listeners close,
//! `Stats` agrees with the requests made, and promtool accepts a scrape taken under load.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use inferd::client::{BlockingClient, ClientOptions};
use inferd::proto::{ErrorCode, ServingState};
use inferd::tensor::HostTensor;

use crate::errors::slow_batch;
use crate::harness::{digits_input, eventually, http_get, infer_digits, TestServer};
use crate::raw::{Got, Raw};

/// Every sample of a scrape, keyed by `name{labels}` exactly as written.
fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = http_get(server.metrics_addr.unwrap(), "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let get = |m: &HashMap<String, f64>| m.get(key).copied().unwrap_or(0.0);
    assert!(after.contains_key(key), "no series {key}");
    get(after) - get(before)
}

#[test]
fn an_answer_written_after_its_deadline_is_counted_late() {
    let server = TestServer::with(|c| c.workers = 1);
    let late = r#"inferd_answers_after_deadline_total{model="digits-mlp",version="1"}"#;
    let mut raw = Raw::ready(server.addr);
    // How long a batch of thousands of rows takes here, end to end: the scale of the deadline below.
    // The shorter of two, since the first run of that size also allocates its buffers.
    let mut slow = Duration::MAX;
    for id in [1, 2] {
        let t = Instant::now();
        raw.infer(id, "digits-mlp", &[slow_batch()]);
        assert!(matches!(raw.recv(), Some(Got::Result { .. })));
        slow = slow.min(t.elapsed());
    }
    // Small runs bring the model's measured answer time back to microseconds (its moving averages
    // forget the slow run by 1/8 and 1/4 per execution).
    for id in 3..60 {
        raw.infer(id, "digits-mlp", &[digits_input()]);
        assert!(matches!(raw.recv(), Some(Got::Result { .. })));
    }
    let before = scrape(&server);
    assert_eq!(before.get(late), Some(&0.0));
    // A quarter of that run as the deadline passes admission and the worker's check (a row takes
    // microseconds); the run then ends after it, and its answer, still sent, is late.
    let deadline = u32::try_from(slow.as_millis() / 4).unwrap().max(1);
    raw.infer_with(100, "digits-mlp", None, Some(deadline), &[slow_batch()]);
    match raw.recv() {
        Some(Got::Result { id: 100, .. }) => {}
        other => {
            panic!("expected the slow batch's outputs ({deadline} ms deadline), got {other:?}")
        }
    }
    // Counted once written, which may follow the client's read by a moment.
    eventually("the late answer was not counted", || {
        delta(&before, &scrape(&server), late) == 1.0
    });
    let ok = r#"inferd_requests_total{model="digits-mlp",outcome="ok",version="1"}"#;
    assert_eq!(delta(&before, &scrape(&server), ok), 1.0);
}

#[test]
fn metrics_move_by_exactly_the_requests_and_errors_made() {
    let server = TestServer::start();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let x = digits_input();
    // Series exist from the start, so a first scrape already lists every served model.
    let before = scrape(&server);
    assert!(before
        .contains_key(r#"inferd_requests_total{model="digits-mlp",outcome="ok",version="1"}"#));
    const OK: usize = 7;
    for _ in 0..OK {
        client
            .infer("digits-mlp", None, std::slice::from_ref(&x), None)
            .unwrap();
    }
    let wrong = HostTensor::from_f32("X", &[1, 3], &[0.0; 3]);
    for _ in 0..2 {
        let e = client
            .infer("digits-mlp", None, std::slice::from_ref(&wrong), None)
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::WRONG_SHAPE));
    }
    let e = client
        .infer("no-such-model", None, std::slice::from_ref(&x), None)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNKNOWN_MODEL));
    let after = scrape(&server);

    let m = r#"model="digits-mlp",version="1""#;
    let exact = [
        (
            r#"inferd_requests_total{model="digits-mlp",outcome="ok",version="1"}"#.to_owned(),
            OK,
        ),
        (
            r#"inferd_requests_total{model="digits-mlp",outcome="wrong_shape",version="1"}"#
                .to_owned(),
            2,
        ),
        (
            r#"inferd_requests_total{model="",outcome="unknown_model",version=""}"#.to_owned(),
            1,
        ),
        // Answered long before the default deadline.
        (format!("inferd_answers_after_deadline_total{{{m}}}"), 0),
        // Histograms count admitted requests: the refused ones never reached a queue.
        (format!("inferd_request_duration_seconds_count{{{m}}}"), OK),
        (
            format!(r#"inferd_request_duration_seconds_bucket{{{m},le="+Inf"}}"#),
            OK,
        ),
        (format!("inferd_queue_wait_seconds_count{{{m}}}"), OK),
        // One request at a time: every execution carries one request.
        (format!("inferd_compute_duration_seconds_count{{{m}}}"), OK),
        (format!("inferd_batch_size_count{{{m}}}"), OK),
        (format!("inferd_batch_size_sum{{{m}}}"), OK),
        (format!(r#"inferd_batch_size_bucket{{{m},le="1"}}"#), OK),
    ];
    for (key, n) in &exact {
        assert_eq!(delta(&before, &after, key), *n as f64, "{key}");
    }
    assert_eq!(after[&format!("inferd_in_flight_requests{{{m}}}")], 0.0);
    assert_eq!(after[&format!("inferd_queue_depth{{{m}}}")], 0.0);
    assert_eq!(after[r#"inferd_connections{listener="plain"}"#], 1.0);
    assert!(
        delta(
            &before,
            &after,
            r#"inferd_received_bytes_total{listener="plain"}"#
        ) > 0.0
    );
    assert!(
        delta(
            &before,
            &after,
            r#"inferd_sent_bytes_total{listener="plain"}"#
        ) > 0.0
    );
    assert_eq!(after["inferd_ready"], 1.0);
    assert!(after["process_resident_memory_bytes"] > 1e6);
    assert!(after[&format!("inferd_model_load_duration_seconds{{{m}}}")] > 0.0);
    assert!(after[&format!("inferd_model_warmup_duration_seconds{{{m}}}")] > 0.0);
}

#[test]
fn stats_over_the_protocol_agree_with_the_requests_made() {
    let server = TestServer::start();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let x = digits_input();
    for _ in 0..5 {
        client
            .infer("digits-mlp", Some(1), std::slice::from_ref(&x), None)
            .unwrap();
    }
    let bad = HostTensor::from_f32("X", &[1, 3], &[0.0; 3]);
    assert!(client
        .infer("digits-mlp", Some(1), std::slice::from_ref(&bad), None)
        .is_err());
    let stats = client.stats().unwrap();
    assert_eq!(stats.state, ServingState::Ready);
    assert_eq!(stats.connections, 1);
    let digits = stats
        .models
        .iter()
        .find(|m| m.name == "digits-mlp" && m.version == 1)
        .unwrap();
    assert_eq!((digits.ok, digits.errors), (5, 1));
    assert_eq!((digits.queued, digits.in_flight), (0, 0));
    assert_eq!(digits.latency.len(), inferd::proto::LATENCY_BUCKETS);
    assert_eq!(*digits.latency.last().unwrap(), 5, "admitted requests only");
    assert!(
        digits.latency.windows(2).all(|w| w[0] <= w[1]),
        "cumulative"
    );
    let names: Vec<&str> = stats.models.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.contains(&"ppocr-cls") && names.contains(&"silero-vad"),
        "{names:?}"
    );
}

#[test]
fn readiness_fails_at_once_on_drain_while_serving_goes_on_until_the_delay_ends() {
    let server = TestServer::with(|c| c.shutdown_delay = Duration::from_millis(1500));
    let http = server.metrics_addr.unwrap();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let x = digits_input();
    assert_eq!(http_get(http, "/health/ready"), (200, "ready\n".into()));
    assert_eq!(client.health().unwrap(), ServingState::Ready);

    server.handle.shutdown();
    assert_eq!(http_get(http, "/health/ready"), (503, "draining\n".into()));
    assert_eq!(http_get(http, "/health/live").0, 200);
    assert_eq!(client.health().unwrap(), ServingState::Draining);
    // During the delay: requests are served, and new connections are accepted.
    client
        .infer("digits-mlp", None, std::slice::from_ref(&x), None)
        .unwrap();
    let late = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    assert_eq!(late.health().unwrap(), ServingState::Draining);
    late.infer("digits-mlp", None, std::slice::from_ref(&x), None)
        .unwrap();
    assert!(!server.handle.is_stopping());

    eventually("the listeners close after the delay", || {
        server.handle.is_stopping()
    });
    // Nothing in flight: the connection is told, at the connection level, and closed.
    let e = client
        .infer("digits-mlp", None, std::slice::from_ref(&x), None)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SHUTTING_DOWN), "{e}");
    // The listener closes on the I/O thread once it next polls its accept loop, which may come
    // just after that answer went out: a connection made in between is still served (and told
    // SHUTTING_DOWN), so what must hold is that the listener closes, not that it beat the answer.
    eventually("the listener closes", || {
        BlockingClient::connect(server.addr, ClientOptions::default()).is_err()
    });
}

#[test]
fn the_http_endpoint_refuses_what_it_does_not_serve() {
    let server = TestServer::start();
    let http = server.metrics_addr.unwrap();
    assert_eq!(http_get(http, "/nope").0, 404);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).unwrap();
    write!(s, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    let mut s = std::net::TcpStream::connect(http).unwrap();
    let _ = s.write_all(format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000)).as_bytes());
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

/// promtool from Debian's `prometheus` package (`.ci/run` installs it). Outside CI a machine without it
/// skips the check, saying so; in CI its absence fails the test.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI"
        );
        eprintln!("promtool not installed: skipping the promtool check");
        return None;
    }
    Some("promtool")
}

#[test]
fn promtool_accepts_a_scrape_taken_under_load() {
    let Some(promtool) = promtool() else { return };
    let server = TestServer::start();
    let plan = inferd::loadgen::LoadPlan {
        addr: server.addr,
        options: ClientOptions::default(),
        model: "digits-mlp".into(),
        version: None,
        inputs: vec![digits_input()],
        connections: 2,
        depth: 4,
        rate: None,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        deadline: None,
        progress: false,
        seed: 1,
        server_metrics: None,
    };
    let load = std::thread::spawn(move || inferd::loadgen::run(&plan).unwrap());
    let http = server.metrics_addr.unwrap();
    eventually("the load reaches the server", || {
        scrape(&server)
            .get(r#"inferd_requests_total{model="digits-mlp",outcome="ok",version="1"}"#)
            .is_some_and(|n| *n > 100.0)
    });
    let (_, body) = http_get(http, "/metrics");
    let report = load.join().unwrap();
    assert!(report.ok > 0 && report.errors.is_empty(), "{report:?}");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{body}");
    assert!(said.trim().is_empty(), "promtool lint findings: {said}");
}

#[test]
fn stats_and_top_print_a_line_per_model() {
    let server = TestServer::start();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    for _ in 0..3 {
        infer_digits(&client);
    }
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
            .args(args)
            .args(["--addr", &server.addr.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["stats", "--json"])).unwrap();
    let digits = json["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "digits-mlp")
        .unwrap();
    assert_eq!(digits["ok"], 3);
    assert!(digits["p50_us"].as_f64().unwrap() > 0.0);
    let top = run(&["top", "--count", "2", "--interval-ms", "200"]);
    assert_eq!(top.matches("MODEL").count(), 2, "{top}");
    assert!(top.lines().any(|l| l.starts_with("digits-mlp ")), "{top}");
    let health = run(&["health"]);
    assert!(health.contains("Ready"), "{health}");
}

#[test]
fn the_grafana_dashboard_queries_parse_and_name_real_series() {
    let text =
        std::fs::read_to_string(crate::harness::repo_root().join("doc/grafana-dashboard.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 8);
    // Every series a panel reads exists in a real scrape.
    let server = TestServer::start();
    let (_, body) = http_get(server.metrics_addr.unwrap(), "/metrics");
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("inferd_") || word.starts_with("process_") {
                assert!(
                    body.contains(&format!("\n{word}")),
                    "{word} is not exported"
                );
            }
        }
    }
    let Some(promtool) = promtool() else { return };
    // And the PromQL parses: as recording rules, with Grafana's variables filled in.
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$model", ".*");
        rules.push_str(&format!(
            "  - record: dashboard:panel{i}\n    expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(format!("inferd-dashboard-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{out:?}");
}
