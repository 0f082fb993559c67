//! What recording metrics costs on the hot path: the same server twice, `--metrics true` and `false`,
//! at saturation (closed loop) and at a fixed open-loop rate, alternating runs to even out the noise of
//! a shared machine. Prints ratios (on / off) measured in this one run.
//!
//! `cargo bench --bench metrics [-- MODEL...]` (default: digits-mlp, the fastest model, where a fixed
//! per-request cost shows most; then silero-vad).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use inferd::client::ClientOptions;
use inferd::config::{ServeArgs, ServeConfig};
use inferd::loadgen::{self, LoadPlan, Report};
use inferd::model::repository::Settings;
use inferd::model::Repository;
use inferd::server::{Server, ServerHandle};

const WORKERS: usize = 2;
const ROUNDS: usize = 3;

fn start(
    registry: &Arc<Repository>,
    root: &std::path::Path,
    metrics: bool,
) -> (
    std::net::SocketAddr,
    ServerHandle,
    std::thread::JoinHandle<()>,
) {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        models: Some(root.join("models")),
        workers: Some(WORKERS),
        metrics: Some(metrics),
        ..ServeArgs::default()
    };
    let server = Server::bind(ServeConfig::resolve(&args).unwrap(), Arc::clone(registry)).unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    (addr, handle, std::thread::spawn(move || server.run()))
}

fn load(
    addr: std::net::SocketAddr,
    model: &str,
    inputs: &[inferd::tensor::HostTensor],
    rate: Option<f64>,
) -> Report {
    loadgen::run(&LoadPlan {
        addr,
        options: ClientOptions::default(),
        model: model.into(),
        version: None,
        inputs: inputs.to_vec(),
        connections: 4,
        depth: 8,
        rate,
        duration: Duration::from_secs(3),
        warmup: Duration::from_millis(500),
        deadline: None,
        progress: false,
        seed: 11,
        server_metrics: None,
    })
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut models: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if models.is_empty() {
        models = vec!["digits-mlp".into(), "silero-vad".into()];
    }
    let registry = Arc::new(Repository::open(&root.join("models"), Settings::default()).unwrap());
    let (on_addr, on, on_thread) = start(&registry, &root, true);
    let (off_addr, off, off_thread) = start(&registry, &root, false);
    println!("# metrics recording on vs off ({WORKERS} workers, 4 connections x 8 in flight; median of {ROUNDS} alternating rounds)");
    for model in &models {
        let inputs =
            inferd::npy::read_folder(&root.join("models").join(model).join("1/sample")).unwrap();
        let (mut rps_on, mut rps_off, mut p50_on, mut p50_off, mut p99_on, mut p99_off) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let a = load(on_addr, model, &inputs, None);
            let b = load(off_addr, model, &inputs, None);
            assert!(a.errors.is_empty() && b.errors.is_empty(), "{a:?} {b:?}");
            rps_on.push(a.throughput_rps);
            rps_off.push(b.throughput_rps);
        }
        // Open loop at half the slower saturation: the latency a request pays for being counted.
        let rate = 0.5 * median(rps_on.clone()).min(median(rps_off.clone()));
        for _ in 0..ROUNDS {
            let a = load(on_addr, model, &inputs, Some(rate));
            let b = load(off_addr, model, &inputs, Some(rate));
            p50_on.push(a.p50_us as f64);
            p50_off.push(b.p50_us as f64);
            p99_on.push(a.p99_us as f64);
            p99_off.push(b.p99_us as f64);
        }
        let (r_on, r_off) = (median(rps_on), median(rps_off));
        let (m50_on, m50_off) = (median(p50_on), median(p50_off));
        let (m99_on, m99_off) = (median(p99_on), median(p99_off));
        println!(
            "{model}: saturation on {r_on:.0} / off {r_off:.0} req/s = {:.3}x | at {rate:.0} req/s p50 on {m50_on:.0} / off {m50_off:.0} us = {:.3}x, p99 on {m99_on:.0} / off {m99_off:.0} us = {:.3}x",
            r_on / r_off,
            m50_on / m50_off,
            m99_on / m99_off,
        );
    }
    on.shutdown();
    off.shutdown();
    on_thread.join().unwrap();
    off_thread.join().unwrap();
}
