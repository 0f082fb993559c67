//! What TLS costs: handshake time, and inference latency at 50 % of saturation, plain TCP vs TLS 1.3
//! with client certificates, measured in one run on the same in-process server. The load is
//! `inferd bench`'s generator (open loop: latency from the intended send time).
//!
//! `cargo bench --bench tls` (release build). Prints medians, p99s and TLS/plain ratios; these machines
//! are noisy, so read the ratios.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd::certs::Ca;
use inferd::client::{BlockingClient, ClientOptions, ClientTls};
use inferd::config::{ServeArgs, ServeConfig, TlsListen};
use inferd::loadgen::{self, LoadPlan, Report};
use inferd::model::repository::Settings;
use inferd::model::Repository;
use inferd::server::tls::TlsFiles;
use inferd::server::Server;
use inferd::tensor::HostTensor;

const MODEL: &str = "digits-mlp";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let ix = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[ix]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn input() -> HostTensor {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    inferd::npy::read_file(&root.join("models/digits-mlp/1/sample/X.npy"), "X").unwrap()
}

/// Connect + Hello/Welcome, `n` times, sequentially.
fn handshakes(addr: std::net::SocketAddr, tls: Option<ClientTls>, n: usize) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let options = ClientOptions {
                tls: tls.clone(),
                ..ClientOptions::default()
            };
            let t = Instant::now();
            let client = BlockingClient::connect(addr, options).unwrap();
            let d = t.elapsed();
            drop(client);
            d
        })
        .collect();
    times.sort();
    times
}

/// A measured phase of the load generator against `addr`, 16 in flight on one connection (closed
/// loop) or at `rate` (open loop).
fn load(
    addr: std::net::SocketAddr,
    tls: Option<ClientTls>,
    rate: Option<f64>,
    secs: f64,
) -> Report {
    let plan = LoadPlan {
        addr,
        options: ClientOptions {
            tls,
            ..ClientOptions::default()
        },
        model: MODEL.into(),
        version: None,
        inputs: vec![input()],
        connections: 1,
        depth: 16,
        rate,
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_millis(500),
        deadline: None,
        progress: false,
        seed: 1,
        server_metrics: None,
    };
    let report = loadgen::run(&plan).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
}

fn main() {
    let dir = std::env::temp_dir().join(format!("inferd-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("bench CA").unwrap();
    let server_cert = ca.server(&["127.0.0.1".into()], 1).unwrap();
    let device = ca.device("bench-device", 2).unwrap();
    for (name, text) in [
        ("ca.pem", &ca.cert_pem),
        ("server.pem", &server_cert.cert_pem),
        ("server.key", &server_cert.key_pem),
        ("device.pem", &device.cert_pem),
        ("device.key", &device.key_pem),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        models: Some(root.join("models")),
        ..ServeArgs::default()
    };
    let mut config = ServeConfig::resolve(&args).unwrap();
    config.tls = Some(TlsListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        files: TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.pem")),
            crl: None,
            allow_tls12: false,
        },
    });
    let repository = Arc::new(Repository::open(&root.join("models"), Settings::default()).unwrap());
    let server = Server::bind(config, repository).unwrap();
    let (plain, tls_addr) = (
        server.local_addr().unwrap(),
        server.tls_local_addr().unwrap(),
    );
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());
    let tls = ClientTls::from_files(
        &dir.join("ca.pem"),
        Some((&dir.join("device.pem"), &dir.join("device.key"))),
        "127.0.0.1",
    )
    .unwrap();

    println!(
        "# inferd TLS cost ({MODEL}, in-process server, {} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let hp = handshakes(plain, None, 200);
    let ht = handshakes(tls_addr, Some(tls.clone()), 200);
    println!(
        "connect+hello   plain p50 {:.3} ms p99 {:.3} ms | TLS 1.3 mTLS p50 {:.3} ms p99 {:.3} ms | ratio p50 {:.2}x",
        ms(percentile(&hp, 0.5)),
        ms(percentile(&hp, 0.99)),
        ms(percentile(&ht, 0.5)),
        ms(percentile(&ht, 0.99)),
        ms(percentile(&ht, 0.5)) / ms(percentile(&hp, 0.5))
    );
    let sat_plain = load(plain, None, None, 3.0).throughput_rps;
    let sat_tls = load(tls_addr, Some(tls.clone()), None, 3.0).throughput_rps;
    println!(
        "saturation      plain {sat_plain:.0} req/s | TLS {sat_tls:.0} req/s | ratio {:.2}x",
        sat_tls / sat_plain
    );
    let rate = sat_plain * 0.5;
    let lp = load(plain, None, Some(rate), 4.0);
    let lt = load(tls_addr, Some(tls), Some(rate), 4.0);
    println!(
        "at 50% ({rate:.0} req/s) plain p50 {:.3} ms p99 {:.3} ms | TLS p50 {:.3} ms p99 {:.3} ms | ratio p50 {:.2}x p99 {:.2}x",
        lp.p50_us as f64 / 1e3,
        lp.p99_us as f64 / 1e3,
        lt.p50_us as f64 / 1e3,
        lt.p99_us as f64 / 1e3,
        lt.p50_us as f64 / lp.p50_us as f64,
        lt.p99_us as f64 / lp.p99_us as f64
    );
    handle.shutdown();
    thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
