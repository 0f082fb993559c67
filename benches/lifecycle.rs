//! Model lifecycle figures, in one run (`cargo bench --bench lifecycle`):
//!
//! 1. where each shipped model's start-up time goes (ONNX parse, typing, declutter, optimisation, the
//!    first warm-up run), and what a prepared form would save: the same model read back from tract's
//!    NNEF serialisation and optimised, as a ratio to the ONNX path;
//! 2. process start → ready (`inferd serve` on the shipped repository, until /health/ready answers 200),
//!    median of 5;
//! 3. the first request after ready against the steady-state p50, per shipped model, with warm-up on
//!    (the default) and off;
//! 4. 1,000 swaps between two versions under continuous closed-loop load: failed requests, p99 during
//!    swaps against steady p99, resident memory after the last swap against after the first.
//!
//! `-- --swaps N` changes the swap count.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferd::client::{BlockingClient, ClientOptions};
use inferd::config::{ServeArgs, ServeConfig};
use inferd::model::manifest::Manifest;
use inferd::model::repository::Settings;
use inferd::model::runtime::Prepared;
use inferd::model::Repository;
use inferd::server::Server;
use inferd::tensor::HostTensor;

const SHIPPED: [&str; 5] = [
    "digits-mlp",
    "digits-mlp-int8",
    "ppocr-cls",
    "silero-vad",
    "silero-vad-int8",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn sample(dir: &Path) -> Vec<HostTensor> {
    inferd::npy::read_folder(&dir.join("sample")).unwrap()
}

/// Best of 5 of each phase, so that one preempted run does not decide.
fn start_up_phases(root: &Path) {
    println!("# 1. start-up phases per model, best of 5 (ms); 'NNEF' = read the prepared form + optimise");
    println!(
        "{:<16} {:>7} {:>7} {:>9} {:>9} {:>8} {:>10} {:>10} {:>12}",
        "model",
        "parse",
        "typing",
        "declutter",
        "optimise",
        "first",
        "ONNX total",
        "NNEF total",
        "ONNX / NNEF"
    );
    for name in SHIPPED {
        let dir = root.join("models").join(name).join("1");
        let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
        let manifest = Manifest::load(&dir).unwrap();
        let facts = manifest
            .as_ref()
            .filter(|m| !m.inputs.is_empty())
            .map(|m| m.inputs.as_slice());
        let inputs = sample(&dir);
        let mut best = [Duration::MAX; 6];
        let mut nnef = None;
        let mut nnef_total = Duration::MAX;
        for _ in 0..5 {
            let (prepared, phases) = Prepared::from_onnx(&bytes, facts).unwrap();
            let archive = prepared.to_nnef().ok();
            let outputs = prepared.output_names().to_vec();
            let t = Instant::now();
            let runtime = prepared.into_runtime().unwrap();
            let optimise = t.elapsed();
            let ordered: Vec<HostTensor> = runtime
                .inputs()
                .iter()
                .map(|s| inputs.iter().find(|t| t.name == s.name).unwrap().clone())
                .collect();
            let t = Instant::now();
            runtime.run(ordered).unwrap();
            let first = t.elapsed();
            let total = phases.parse + phases.typing + phases.declutter + optimise;
            for (b, v) in best.iter_mut().zip([
                phases.parse,
                phases.typing,
                phases.declutter,
                optimise,
                first,
                total,
            ]) {
                *b = (*b).min(v);
            }
            if let Some(archive) = archive {
                let t = Instant::now();
                let back = Prepared::from_nnef(&archive, outputs).unwrap();
                back.into_runtime().unwrap();
                nnef_total = nnef_total.min(t.elapsed());
                nnef = Some(archive.len());
            }
        }
        let (nnef_col, ratio) = match nnef {
            Some(_) => (
                format!("{:.2}", ms(nnef_total)),
                format!("{:.2}x", best[5].as_secs_f64() / nnef_total.as_secs_f64()),
            ),
            None => ("n/a".to_owned(), "no NNEF form".to_owned()),
        };
        println!(
            "{name:<16} {:>7.2} {:>7.2} {:>9.2} {:>9.2} {:>8.2} {:>10.2} {:>10} {:>12}",
            ms(best[0]),
            ms(best[1]),
            ms(best[2]),
            ms(best[3]),
            ms(best[4]),
            ms(best[5]),
            nnef_col,
            ratio
        );
    }
}

/// Spawns the daemon and polls /health/ready; returns spawn → 200.
fn start_to_ready(root: &Path) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--models",
        ])
        .arg(root.join("models"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut metrics = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("metrics and health on http://").nth(1) {
            metrics = Some(rest.split('/').next().unwrap().parse().unwrap());
            break;
        }
    }
    let addr: std::net::SocketAddr = metrics.expect("the daemon logs its metrics address");
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn first_request_vs_steady(root: &Path, warmup_runs: u32) {
    let repository = Arc::new(
        Repository::open(
            &root.join("models"),
            Settings {
                warmup_runs,
                ..Settings::default()
            },
        )
        .unwrap(),
    );
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some(inferd::config::Listen::Off),
        models: Some(root.join("models")),
        model_poll_ms: Some(0),
        ..ServeArgs::default()
    };
    let server = Server::bind(ServeConfig::resolve(&args).unwrap(), repository).unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());
    let client = BlockingClient::connect(addr, ClientOptions::default()).unwrap();
    for name in SHIPPED {
        let inputs = sample(&root.join("models").join(name).join("1"));
        let t = Instant::now();
        client.infer(name, None, &inputs, None).unwrap();
        let first = t.elapsed();
        let steady = median(
            (0..300)
                .map(|_| {
                    let t = Instant::now();
                    client.infer(name, None, &inputs, None).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "{name:<16} warm-up runs {warmup_runs}: first request {:>8.3} ms, steady p50 {:>8.3} ms, first / p50 = {:.2}x",
            ms(first),
            ms(steady),
            first.as_secs_f64() / steady.as_secs_f64()
        );
    }
    handle.shutdown();
    thread.join().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// Closed-loop load on `connections` connections until `stop`: latencies and failures.
fn closed_loop(
    addr: std::net::SocketAddr,
    model: &'static str,
    inputs: Vec<HostTensor>,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, u64) {
    let failures = Arc::new(AtomicU64::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, failures, times, inputs) = (
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&times),
                inputs.clone(),
            );
            std::thread::spawn(move || {
                let client = BlockingClient::connect(addr, ClientOptions::default()).unwrap();
                let mut mine = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.infer(model, None, &inputs, None) {
                        Ok(_) => mine.push(t.elapsed()),
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                times.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let times = std::mem::take(&mut *times.lock().unwrap());
    (times, failures.load(Ordering::Relaxed))
}

fn swaps_under_load(root: &Path, swaps: usize) {
    const MODEL: &str = "digits";
    let repo = std::env::temp_dir().join(format!("inferd-bench-swaps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    let source = root.join("models/digits-mlp/1");
    copy_dir(&source, &repo.join(MODEL).join("1"));
    let repository = Arc::new(Repository::open(&repo, Settings::default()).unwrap());
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some(inferd::config::Listen::Off),
        models: Some(repo.clone()),
        model_poll_ms: Some(0),
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
    let inputs = sample(&source);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, inputs) = (Arc::clone(&stop), inputs.clone());
        std::thread::spawn(move || closed_loop(addr, MODEL, inputs, 3, stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (mut steady, steady_failures) = load.join().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || closed_loop(addr, MODEL, inputs, 3, stop))
    };
    let started = Instant::now();
    let mut rss_first = 0;
    for i in 0..swaps {
        // Version 2 in (latest:1 serves it alone), then out (version 1 again), as an operator
        // would: a copy beside, renamed into place; removed by rename.
        if i % 2 == 0 {
            let staging = repo.join(MODEL).join(".2-incoming");
            copy_dir(&source, &staging);
            std::fs::rename(&staging, repo.join(MODEL).join("2")).unwrap();
        } else {
            let gone = repo.join(MODEL).join(".2-removed");
            std::fs::rename(repo.join(MODEL).join("2"), &gone).unwrap();
            std::fs::remove_dir_all(&gone).unwrap();
        }
        let changes = repository.rescan().unwrap();
        assert!(
            changes.swapped() && changes.failed.is_empty(),
            "{changes:?}"
        );
        if i == 0 {
            rss_first = inferd::metrics::resident_bytes().unwrap_or(0);
        }
    }
    let swapping = started.elapsed();
    let rss_last = inferd::metrics::resident_bytes().unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let (mut during, failures) = load.join().unwrap();
    handle.shutdown();
    thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&repo);
    let (p99_steady, p99_during) = (quantile(&mut steady, 0.99), quantile(&mut during, 0.99));
    println!(
        "{swaps} swaps of digits-mlp in {:.1} s ({:.2} ms each) under 3-connection closed-loop load: \
         {} requests answered during swaps, {failures} failed (steady: {} answered, {steady_failures} failed)",
        swapping.as_secs_f64(),
        ms(swapping) / swaps as f64,
        during.len(),
        steady.len()
    );
    println!(
        "p99 steady {:.3} ms, during swaps {:.3} ms: {:.2}x | p50 steady {:.3} ms, during {:.3} ms",
        ms(p99_steady),
        ms(p99_during),
        p99_during.as_secs_f64() / p99_steady.as_secs_f64(),
        ms(quantile(&mut steady, 0.5)),
        ms(quantile(&mut during, 0.5)),
    );
    println!(
        "RSS after the first swap {:.1} MiB, after the last {:.1} MiB: {:.3}x",
        rss_first as f64 / 1048576.0,
        rss_last as f64 / 1048576.0,
        rss_last as f64 / rss_first.max(1) as f64
    );
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args().collect();
    let swaps = args
        .iter()
        .position(|a| a == "--swaps")
        .and_then(|i| args.get(i + 1))
        .map_or(1000, |n| n.parse().unwrap());

    start_up_phases(&root);

    println!("\n# 2. process start -> /health/ready 200, all shipped models loaded and warm");
    let times: Vec<Duration> = (0..5).map(|_| start_to_ready(&root)).collect();
    let shown: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
    println!(
        "median {:.0} ms (runs: {} ms)",
        ms(median(times.clone())),
        shown.join(", ")
    );

    println!("\n# 3. first request after ready vs steady p50 (one connection, sequential)");
    first_request_vs_steady(&root, 3);
    first_request_vs_steady(&root, 0);

    println!("\n# 4. hot swaps under load");
    swaps_under_load(&root, swaps);
}
