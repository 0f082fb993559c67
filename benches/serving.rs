//! inferd against its own ceiling, in one run: tract on the same model with the same number of worker
//! threads and no network (the in-process ceiling), then inferd over loopback at saturation and at
//! 50 % of it (open loop, latency from the intended send time).
//!
//! `cargo bench --bench serving [-- MODEL...]` (default: ppocr-cls silero-vad digits-mlp). Prints
//! ratios; the load generator shares the machine's cores with the server, as a client on the same
//! gateway would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd::client::ClientOptions;
use inferd::config::{ServeArgs, ServeConfig};
use inferd::loadgen::{self, LoadPlan, Report};
use inferd::model::repository::Settings;
use inferd::model::{Registry, Repository};
use inferd::server::Server;
use inferd::tensor::HostTensor;

const WORKERS: usize = 2;

fn sample(dir: &Path) -> Vec<HostTensor> {
    inferd::npy::read_folder(&dir.join("sample")).unwrap()
}

/// `WORKERS` threads calling the model directly for `secs`: requests per second and median latency.
fn ceiling(registry: &Registry, model: &str, inputs: &[HostTensor], secs: f64) -> (f64, Duration) {
    let served = registry.get(model, None).unwrap();
    // The model takes inputs in its declared order.
    let ordered: Vec<HostTensor> = served
        .runtime
        .inputs()
        .iter()
        .map(|spec| inputs.iter().find(|t| t.name == spec.name).unwrap().clone())
        .collect();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (served, ordered) = (Arc::clone(&served), ordered.clone());
            std::thread::spawn(move || {
                let mut times = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    served.runtime.run(ordered.clone()).unwrap();
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    times.sort();
    (times.len() as f64 / secs, times[times.len() / 2])
}

fn load(
    addr: std::net::SocketAddr,
    model: &str,
    inputs: &[HostTensor],
    rate: Option<f64>,
    secs: f64,
) -> Report {
    let plan = LoadPlan {
        addr,
        options: ClientOptions::default(),
        model: model.into(),
        version: None,
        inputs: inputs.to_vec(),
        connections: 4,
        depth: 8,
        rate,
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_millis(500),
        deadline: None,
        progress: false,
        seed: 7,
        server_metrics: None,
    };
    loadgen::run(&plan).unwrap()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let models = if models.is_empty() {
        vec![
            "ppocr-cls".to_string(),
            "silero-vad".to_string(),
            "digits-mlp".to_string(),
        ]
    } else {
        models
    };
    let repository = Arc::new(Repository::open(&root.join("models"), Settings::default()).unwrap());
    let registry = repository.snapshot();
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        models: Some(root.join("models")),
        workers: Some(WORKERS),
        ..ServeArgs::default()
    };
    let server = Server::bind(
        ServeConfig::resolve(&args).unwrap(),
        Arc::clone(&repository),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());

    println!(
        "# inferd vs its in-process ceiling ({WORKERS} workers, load generator on the same cores)"
    );
    for model in &models {
        let inputs = sample(&root.join("models").join(model).join("1"));
        let (ceiling_rps, ceiling_p50) = ceiling(&registry, model, &inputs, 3.0);
        let sat = load(addr, model, &inputs, None, 5.0);
        let half = load(addr, model, &inputs, Some(sat.throughput_rps * 0.5), 5.0);
        let errors: u64 = sat.errors.values().chain(half.errors.values()).sum();
        println!(
            "{model}: ceiling {ceiling_rps:.0} req/s (p50 {:.3} ms) | inferd saturation {:.0} req/s = {:.2}x ceiling | at 50% ({:.0} req/s) p50 {:.3} ms p99 {:.3} ms; p99 - ceiling p50 = {:.0} us | errors {errors}",
            ceiling_p50.as_secs_f64() * 1e3,
            sat.throughput_rps,
            sat.throughput_rps / ceiling_rps,
            sat.throughput_rps * 0.5,
            half.p50_us as f64 / 1e3,
            half.p99_us as f64 / 1e3,
            half.p99_us as f64 - ceiling_p50.as_secs_f64() * 1e6,
        );
    }
    handle.shutdown();
    thread.join().unwrap();
}
