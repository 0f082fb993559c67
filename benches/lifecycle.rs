//! Model lifecycle figures, in one run (`cargo bench --bench lifecycle`):
//!
//! 1. where each shipped model's start-up time goes (ONNX parse, typing, declutter, optimisation, the
//!    first warm-up run), and what the prepared-model cache saves: the same model read back from
//!    tract's NNEF serialisation and optimised as the cache does, as a ratio to the ONNX path;
//! 2. process start → ready (`inferd serve` on the shipped repository, until /health/ready answers 200),
//!    median of 5, without the prepared-model cache, with an empty one, and with a warm one;
//! 3. the first request after ready against the steady-state p50, per shipped model, with warm-up on
//!    (the default) and off, split by the daemon's own metrics (admission to answer written, the
//!    model's execution), and the same model run by tract alone after 1 ms and 100 ms of pause;
//! 4. 1,000 swaps between two versions (the model's `serving.toml` alternating `versions = [2]` and
//!    `[1]`) under continuous closed-loop load, through the daemon's own rescan thread: failed
//!    requests, p99 during swaps against steady p99, resident memory after the last swap against after
//!    the first.
//!
//! `-- --swaps N` changes the swap count, `-- --swap-interval-ms MS` pauses between swaps (default 0:
//! back to back, one swap every ~2.5 ms, far more churn than any fleet makes), `-- --only N` runs one
//! section.
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
use inferd::config::ServeArgs;
use inferd::model::manifest::Manifest;
use inferd::model::repository::Settings;
use inferd::model::runtime::Prepared;
use inferd::model::{IoSpec, Repository, Runtime};
use inferd::tensor::HostTensor;

mod common;
use common::{copy_dir, InProcess};

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

/// Request latencies in nanoseconds, 3 significant digits.
struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    fn new() -> Latencies {
        Latencies(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap())
    }
    fn record(&mut self, d: Duration) {
        self.0
            .saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    fn add(&mut self, other: &Latencies) {
        self.0.add(&other.0).unwrap();
    }
    fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.0.value_at_quantile(q))
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
}

fn sample(dir: &Path) -> Vec<HostTensor> {
    inferd::npy::read_folder(&dir.join("sample")).unwrap()
}

/// A shipped model's files as the loader reads them: the ONNX bytes, the manifest, the sample.
struct ModelFiles {
    bytes: Vec<u8>,
    manifest: Option<Manifest>,
    inputs: Vec<HostTensor>,
}

impl ModelFiles {
    fn read(root: &Path, name: &str) -> ModelFiles {
        let dir = root.join("models").join(name).join("1");
        ModelFiles {
            bytes: std::fs::read(dir.join("model.onnx")).unwrap(),
            manifest: Manifest::load(&dir).unwrap(),
            inputs: sample(&dir),
        }
    }

    /// The input facts the manifest declares, if any.
    fn facts(&self) -> Option<&[IoSpec]> {
        self.manifest
            .as_ref()
            .filter(|m| !m.inputs.is_empty())
            .map(|m| m.inputs.as_slice())
    }

    /// The sample in `runtime`'s input order.
    fn ordered(&self, runtime: &Runtime) -> Vec<HostTensor> {
        runtime
            .inputs()
            .iter()
            .map(|s| {
                self.inputs
                    .iter()
                    .find(|t| t.name == s.name)
                    .unwrap()
                    .clone()
            })
            .collect()
    }
}

/// Best of 5 of each phase, so that one preempted run does not decide.
fn start_up_phases(root: &Path) {
    println!(
        "# 1. start-up phases per model, best of 5 (ms); 'NNEF' = read the cached form + optimise"
    );
    println!(
        "{:<16} {:>7} {:>7} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10} {:>12}",
        "model",
        "parse",
        "typing",
        "declutter",
        "optimise",
        "first",
        "ONNX total",
        "NNEF read",
        "NNEF total",
        "ONNX / NNEF"
    );
    for name in SHIPPED {
        let files = ModelFiles::read(root, name);
        let mut best = [Duration::MAX; 6];
        let mut nnef = None;
        let mut nnef_total = Duration::MAX;
        let mut nnef_read = Duration::MAX;
        for _ in 0..5 {
            let (prepared, phases) = Prepared::from_onnx(&files.bytes, files.facts()).unwrap();
            let archive = prepared.to_nnef().ok();
            let outputs = prepared.output_names().to_vec();
            let repairs = prepared.repairs().to_vec();
            let t = Instant::now();
            let runtime = prepared.into_runtime().unwrap();
            let optimise = t.elapsed();
            let ordered = files.ordered(&runtime);
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
                let back = Prepared::from_nnef(&archive, outputs, repairs).unwrap();
                nnef_read = nnef_read.min(t.elapsed());
                back.into_runtime().unwrap();
                nnef_total = nnef_total.min(t.elapsed());
                nnef = Some(archive.len());
            }
        }
        let (read_col, nnef_col, ratio) = match nnef {
            Some(_) => (
                format!("{:.2}", ms(nnef_read)),
                format!("{:.2}", ms(nnef_total)),
                format!("{:.2}x", best[5].as_secs_f64() / nnef_total.as_secs_f64()),
            ),
            None => (
                "n/a".to_owned(),
                "n/a".to_owned(),
                "no NNEF form".to_owned(),
            ),
        };
        println!(
            "{name:<16} {:>7.2} {:>7.2} {:>9.2} {:>9.2} {:>8.2} {:>10.2} {:>9} {:>10} {:>12}",
            ms(best[0]),
            ms(best[1]),
            ms(best[2]),
            ms(best[3]),
            ms(best[4]),
            ms(best[5]),
            read_col,
            nnef_col,
            ratio
        );
    }
}

/// Spawns the daemon with `--model-cache cache` (a folder or `off`) and polls /health/ready;
/// returns spawn → 200.
fn start_to_ready(root: &Path, cache: &Path) -> Duration {
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
        .arg("--model-cache")
        .arg(cache)
        .env_remove("CACHE_DIRECTORY")
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
    if cache != Path::new("off") {
        // The entries are written after ready, by the model watch thread: let it finish (the
        // three float models; tract cannot write the int8 QDQ ones).
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache_entries(cache) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn cache_entries(cache: &Path) -> usize {
    std::fs::read_dir(cache).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("entry.json").is_file())
            .count()
    })
}

/// The same model run as the workers run it (`Runtime::run`), in this thread, no server: back to back,
/// then each run after the thread has slept 1 ms and 100 ms, and after it has spun 100 ms without
/// touching memory. What a run costs after a quiet spell on this machine, apart from anything inferd
/// does, and whether the CPU's idling is the cause.
fn tract_alone_after_idle(root: &Path) {
    for name in SHIPPED {
        let files = ModelFiles::read(root, name);
        let runtime = Prepared::from_onnx(&files.bytes, files.facts())
            .unwrap()
            .0
            .into_runtime()
            .unwrap();
        let ordered = files.ordered(&runtime);
        let timed = |pause: Duration, spin: bool, runs: usize| {
            let faults = minor_faults();
            let took = median(
                (0..runs)
                    .map(|_| {
                        if spin {
                            // Busy, touching no memory: the CPU never idles.
                            let until = Instant::now() + pause;
                            while Instant::now() < until {
                                std::hint::spin_loop();
                            }
                        } else if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                        let inputs = ordered.clone();
                        let t = Instant::now();
                        runtime.run(inputs).unwrap();
                        t.elapsed()
                    })
                    .collect(),
            );
            (took, (minor_faults() - faults) as f64 / runs as f64)
        };
        timed(Duration::ZERO, false, 20);
        let hot = timed(Duration::ZERO, false, 300);
        let shown: Vec<String> = [
            ("back to back", hot),
            (
                "after 1 ms asleep",
                timed(Duration::from_millis(1), false, 100),
            ),
            (
                "after 100 ms asleep",
                timed(Duration::from_millis(100), false, 20),
            ),
            (
                "after 100 ms spinning",
                timed(Duration::from_millis(100), true, 20),
            ),
        ]
        .iter()
        .map(|(what, (took, faults))| {
            format!(
                "{what} {:.0} us ({:.2}x, {faults:.1} page faults per run)",
                took.as_secs_f64() * 1e6,
                took.as_secs_f64() / hot.0.as_secs_f64()
            )
        })
        .collect();
        println!("{name:<16} tract alone, one thread: {}", shown.join(", "));
    }
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name
        .split(' ')
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap()
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
    let server = InProcess::start(&args, repository);
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    // The round trip without a worker: what the network path and two wake-ups cost on their own.
    let ping = median(
        (0..300)
            .map(|_| {
                let t = Instant::now();
                client.ping().unwrap();
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "ping round trip p50 {:.3} ms (no model, no worker)",
        ms(ping)
    );
    for name in SHIPPED {
        let inputs = sample(&root.join("models").join(name).join("1"));
        // The server's own sums (admission to answer written; the model's execution) split the first
        // request's time from the client's and the wake-ups': warm-up runs are read away as a base.
        let base = ServerSums::read(&server, name);
        let mut after_first = None;
        let firsts: Vec<Duration> = (0..4)
            .map(|i| {
                let t = Instant::now();
                client.infer(name, None, &inputs, None).unwrap();
                let took = t.elapsed();
                if i == 0 {
                    after_first = Some(ServerSums::settled(&server, name, base.count + 1.0));
                }
                took
            })
            .collect();
        let first = firsts[0];
        eprintln!("{name}: first four {:?}", firsts);
        let after_first = after_first.unwrap();
        let steady_base = ServerSums::settled(&server, name, base.count + 4.0);
        let steady = median(
            (0..300)
                .map(|_| {
                    let t = Instant::now();
                    client.infer(name, None, &inputs, None).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        let steady_sums = ServerSums::settled(&server, name, base.count + 304.0);
        let first_server = after_first.request - base.request;
        let first_compute = after_first.compute - base.compute;
        // The same request after the server has been idle for 100 ms (threads parked, caches
        // cooled by nothing else running): what any first request after a quiet spell costs.
        let idle_base = steady_sums;
        let after_idle = median(
            (0..20)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(100));
                    let t = Instant::now();
                    client.infer(name, None, &inputs, None).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "{name:<16} warm-up runs {warmup_runs}: first request {:>7.3} ms, steady p50 {:>7.3} ms, first / p50 = {:.2}x | p50 after 100 ms idle {:>7.3} ms, first / that = {:.2}x",
            ms(first),
            ms(steady),
            first.as_secs_f64() / steady.as_secs_f64(),
            ms(after_idle),
            first.as_secs_f64() / after_idle.as_secs_f64()
        );
        let idle_sums = ServerSums::settled(&server, name, base.count + 324.0);
        let (steady_server, steady_compute) = (
            steady_sums.mean_request(&steady_base),
            steady_sums.mean_compute(&steady_base),
        );
        println!(
            "{:<16}   server side, first / steady mean: admission to answer written {:.0} / {:.0} us = {:.2}x, model execution {:.0} / {:.0} us = {:.2}x | after 100 ms idle, mean: {:.0} us, execution {:.0} us",
            "",
            first_server * 1e6,
            steady_server * 1e6,
            first_server / steady_server,
            first_compute * 1e6,
            steady_compute * 1e6,
            first_compute / steady_compute,
            idle_sums.mean_request(&idle_base) * 1e6,
            idle_sums.mean_compute(&idle_base) * 1e6,
        );
    }
    server.stop();
}

/// One model's server-side sums from the daemon's metrics, in seconds, and how many requests they
/// hold.
#[derive(Clone, Copy)]
struct ServerSums {
    request: f64,
    compute: f64,
    count: f64,
}

impl ServerSums {
    fn read(server: &InProcess, model: &str) -> ServerSums {
        let text = server.handle().metrics_text();
        let series = |metric: &str| -> f64 {
            let label = format!("model=\"{model}\"");
            text.lines()
                .find(|l| l.starts_with(metric) && l.contains(&label))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {metric} for {model} in the metrics"))
                .unwrap()
        };
        ServerSums {
            request: series("inferd_request_duration_seconds_sum{"),
            compute: series("inferd_compute_duration_seconds_sum{"),
            count: series("inferd_request_duration_seconds_count{"),
        }
    }

    /// The sums once `count` requests are recorded: the server records an answer after writing it,
    /// so the client can hold it a moment before the metrics do.
    fn settled(server: &InProcess, model: &str, count: f64) -> ServerSums {
        loop {
            let sums = ServerSums::read(server, model);
            if sums.count >= count {
                assert_eq!(sums.count, count, "no other requests for {model}");
                return sums;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Mean admission-to-answer time of the requests since `before`.
    fn mean_request(&self, before: &ServerSums) -> f64 {
        (self.request - before.request) / (self.count - before.count)
    }

    /// Mean execution time of the requests since `before` (one execution each: one connection,
    /// sequential requests, so no batches).
    fn mean_compute(&self, before: &ServerSums) -> f64 {
        (self.compute - before.compute) / (self.count - before.count)
    }
}

/// Closed-loop load on `connections` connections until `stop`: latencies and failures.
fn closed_loop(
    addr: std::net::SocketAddr,
    model: &'static str,
    inputs: Vec<HostTensor>,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> (Latencies, u64) {
    let failures = Arc::new(AtomicU64::new(0));
    let times = Arc::new(Mutex::new(Latencies::new()));
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
                // A histogram, not a list: constant memory, so that the RSS figures are the server's.
                let mut mine = Latencies::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.infer(model, None, &inputs, None) {
                        Ok(_) => mine.record(t.elapsed()),
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                times.lock().unwrap().add(&mine);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let times = std::mem::replace(&mut *times.lock().unwrap(), Latencies::new());
    (times, failures.load(Ordering::Relaxed))
}

fn swaps_under_load(root: &Path, swaps: usize, interval: Duration, control: bool) {
    const MODEL: &str = "digits";
    let repo = std::env::temp_dir().join(format!("inferd-bench-swaps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    let source = root.join("models/digits-mlp/1");
    copy_dir(&source, &repo.join(MODEL).join("1"));
    copy_dir(&source, &repo.join(MODEL).join("2"));
    std::fs::write(repo.join(MODEL).join("serving.toml"), "versions = [1]\n").unwrap();
    let repository = Arc::new(Repository::open(&repo, Settings::default()).unwrap());
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some(inferd::config::Listen::Off),
        models: Some(repo.clone()),
        model_poll_ms: Some(0),
        ..ServeArgs::default()
    };
    let server = InProcess::start(&args, Arc::clone(&repository));
    let addr = server.addr;
    let inputs = sample(&source);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, inputs) = (Arc::clone(&stop), inputs.clone());
        std::thread::spawn(move || closed_loop(addr, MODEL, inputs, 3, stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (steady, steady_failures) = load.join().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || closed_loop(addr, MODEL, inputs, 3, stop))
    };
    let started = Instant::now();
    let (mut rss_first, mut rss_tenth) = (0, 0);
    for i in 0..swaps {
        // Version 2 then version 1 again, by the model's serving.toml: both folders stay, so what
        // is measured is the daemon's swap (load, warm-up, swap, free), not the copying of files.
        // `--control`: the same rescans and pauses with nothing to swap, to tell the swaps' cost from
        // this machine's own noise over a run of the same length.
        let wanted = if i % 2 == 0 && !control { 2 } else { 1 };
        std::fs::write(
            repo.join(MODEL).join("serving.toml"),
            format!("versions = [{wanted}]\n"),
        )
        .unwrap();
        // Through the daemon's own path: the repository's watch thread, at its priority.
        let changes = server.handle().rescan_models().unwrap();
        assert!(
            changes.swapped() != control && changes.failed.is_empty(),
            "{changes:?}"
        );
        std::thread::sleep(interval);
        if i == 0 {
            rss_first = inferd::metrics::resident_bytes().unwrap_or(0);
        }
        if i == swaps / 10 {
            rss_tenth = inferd::metrics::resident_bytes().unwrap_or(0);
        }
    }
    let swapping = started.elapsed();
    let rss_last = inferd::metrics::resident_bytes().unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let (during, failures) = load.join().unwrap();
    server.stop();
    let _ = std::fs::remove_dir_all(&repo);
    let (p99_steady, p99_during) = (steady.quantile(0.99), during.quantile(0.99));
    println!(
        "{swaps} {} of digits-mlp, {} ms apart, in {:.1} s ({:.2} ms each with the pause) under 3-connection closed-loop load: \
         {} requests answered during swaps, {failures} failed (steady: {} answered, {steady_failures} failed)",
        if control { "control rescans (nothing to swap)" } else { "swaps" },
        interval.as_millis(),
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
        ms(steady.quantile(0.5)),
        ms(during.quantile(0.5)),
    );
    println!(
        "RSS after the first swap {:.1} MiB, after swap {} {:.1} MiB, after the last {:.1} MiB: last / first {:.3}x, last / tenth {:.3}x",
        rss_first as f64 / 1048576.0,
        swaps / 10,
        rss_tenth as f64 / 1048576.0,
        rss_last as f64 / 1048576.0,
        rss_last as f64 / rss_first.max(1) as f64,
        rss_last as f64 / rss_tenth.max(1) as f64
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
    let interval = Duration::from_millis(
        args.iter()
            .position(|a| a == "--swap-interval-ms")
            .and_then(|i| args.get(i + 1))
            .map_or(0, |n| n.parse().unwrap()),
    );

    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    if run("1") {
        start_up_phases(&root);
    }
    if run("2") {
        println!("\n# 2. process start -> /health/ready 200, all shipped models loaded and warm");
        // Interleaved, so that the machine's drift hits the three alike: no cache; an empty cache
        // folder (every model imported, entries written); the same folder again (read back).
        let cache = std::env::temp_dir().join(format!("inferd-bench-cache-{}", std::process::id()));
        let (mut off, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            off.push(start_to_ready(&root, Path::new("off")));
            let _ = std::fs::remove_dir_all(&cache);
            cold.push(start_to_ready(&root, &cache));
            warm.push(start_to_ready(&root, &cache));
        }
        let _ = std::fs::remove_dir_all(&cache);
        for (what, times) in [
            ("no cache", &off),
            ("empty cache (import + write)", &cold),
            ("warm cache", &warm),
        ] {
            let shown: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
            println!(
                "{what:<30} median {:>5.0} ms (runs: {} ms)",
                ms(median(times.clone())),
                shown.join(", ")
            );
        }
        println!(
            "no cache / warm cache: {:.2}x; empty cache / no cache: {:.2}x",
            median(off.clone()).as_secs_f64() / median(warm.clone()).as_secs_f64(),
            median(cold.clone()).as_secs_f64() / median(off.clone()).as_secs_f64()
        );
    }
    if run("3") {
        println!("\n# 3. first request after ready vs steady p50 (one connection, sequential)");
        first_request_vs_steady(&root, 3);
        first_request_vs_steady(&root, 0);
        tract_alone_after_idle(&root);
    }
    if run("4") {
        println!("\n# 4. hot swaps under load");
        swaps_under_load(
            &root,
            swaps,
            interval,
            args.iter().any(|a| a == "--control"),
        );
    }
}
