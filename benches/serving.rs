//! inferd against its own ceiling, in one run: tract on the same model with the same number of worker
//! threads and no network (the in-process ceiling) and inferd over loopback at saturation, in three
//! alternating rounds (the median ratio is printed), then inferd at 50 % of that saturation (open
//! loop, latency from the intended send time). For a model that batches, also the
//! batched ceiling: tract running 32-row batches of the sample, in rows per second, which a batching
//! daemon's saturation is measured against as well (it can pass the one-request-per-run ceiling).
//!
//! `cargo bench --bench serving [-- MODEL...]` (default: ppocr-cls silero-vad digits-mlp). Prints
//! ratios; the load generator shares the machine's cores with the server, as a client on the same
//! gateway would.
//!
//! `-- --pinned`: the comparison the throughput issue asks for, "same model, same cores", with the
//! load generator kept off them. CPU 0 runs the ceiling (one thread) and then the daemon (the
//! `inferd` binary as a child process under `taskset -c 0`, one inference worker, its I/O thread on
//! the same CPU, serving that model alone, as a deployment of it would: `io_preempt = auto` decides
//! from the models served); the load generator runs on the other CPUs. Needs two CPUs and `taskset`. For
//! the batchable models it then compares batching off (a second daemon with `--max-batch 1`) and on,
//! pinned the same way: saturation (4 connections × 16) and p50 one request at a time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::thread::{sched_setaffinity, CpuSet};

use inferd::client::ClientOptions;
use inferd::config::ServeArgs;
use inferd::loadgen::{self, LoadPlan, Report};
use inferd::model::repository::Settings;
use inferd::model::{Registry, Repository};
use inferd::tensor::HostTensor;

mod common;
use common::{copy_dir, InProcess};

const WORKERS: usize = 2;
/// Rounds of ceiling and saturation, alternating (the ratio printed is their median).
const ROUNDS: usize = 3;
/// Rows per run of the batched ceiling: the daemon's default `--max-batch`.
const BATCH_ROWS: usize = 32;

fn sample(dir: &Path) -> Vec<HostTensor> {
    inferd::npy::read_folder(&dir.join("sample")).unwrap()
}

/// Restricts the calling thread (and the threads it starts afterwards) to `cpus`.
fn pin(cpus: impl IntoIterator<Item = usize>) {
    let mut set = CpuSet::new();
    for cpu in cpus {
        set.set(cpu);
    }
    sched_setaffinity(None, &set).unwrap();
}

/// `workers` threads calling the model directly for `secs` (each restricted to `cpus` if given):
/// requests per second and median latency.
fn ceiling(
    registry: &Registry,
    model: &str,
    inputs: &[HostTensor],
    secs: f64,
    workers: usize,
    cpus: Option<&'static [usize]>,
) -> (f64, Duration) {
    let served = registry.get(model, None).unwrap();
    let ordered = in_model_order(registry, model, inputs);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (served, ordered) = (Arc::clone(&served), ordered.clone());
            std::thread::spawn(move || {
                if let Some(cpus) = cpus {
                    pin(cpus.iter().copied());
                }
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

/// `inputs` in the model's declared order, the order `Runtime::run` takes.
fn in_model_order(registry: &Registry, model: &str, inputs: &[HostTensor]) -> Vec<HostTensor> {
    let served = registry.get(model, None).unwrap();
    served
        .runtime
        .inputs()
        .iter()
        .map(|spec| inputs.iter().find(|t| t.name == spec.name).unwrap().clone())
        .collect()
}

fn load(
    addr: std::net::SocketAddr,
    model: &str,
    inputs: &[HostTensor],
    rate: Option<f64>,
    secs: f64,
) -> Report {
    load_with(addr, model, inputs, rate, secs, (4, 8))
}

/// `load` with `(connections, depth)` given: `(1, 1)` is light load, one request at a time.
fn load_with(
    addr: std::net::SocketAddr,
    model: &str,
    inputs: &[HostTensor],
    rate: Option<f64>,
    secs: f64,
    (connections, depth): (usize, usize),
) -> Report {
    let plan = LoadPlan {
        addr,
        options: ClientOptions::default(),
        model: model.into(),
        version: None,
        inputs: inputs.to_vec(),
        connections,
        depth,
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

/// The daemon as a child process on CPU 0 with one worker, serving `models` (with `extra` flags):
/// the child and its address.
fn spawn_pinned_daemon(models: &Path, extra: &[&str]) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_inferd"),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-listen",
            "off",
            "--workers",
            "1",
            "--model-cache",
            "off",
        ])
        .args(extra)
        .arg("--models")
        .arg(models)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskset (util-linux) and the inferd binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the daemon stopped before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split(|c: char| c.is_whitespace() || c == ',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    // Keep reading its log so that the pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// Pinned, for each batchable model: the same daemon with `--max-batch 1` against the running one
/// (the default 32), at saturation and one request at a time, alternating.
fn batching_off_vs_on(
    root: &Path,
    registry: &Registry,
    models: &[String],
    on: std::net::SocketAddr,
) {
    let batchable: Vec<&String> = models
        .iter()
        .filter(|m| registry.get(m, None).is_ok_and(|m| m.batch.is_some()))
        .collect();
    if batchable.is_empty() {
        return;
    }
    let (mut child, off) = spawn_pinned_daemon(&root.join("models"), &["--max-batch", "1"]);
    println!("# batching off (--max-batch 1) vs on (32), pinned as above");
    for model in batchable {
        let inputs = sample(&root.join("models").join(model).join("1"));
        let mut sat = [Vec::new(), Vec::new()];
        let mut light = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            for (ix, addr) in [off, on].into_iter().enumerate() {
                sat[ix].push(load_with(addr, model, &inputs, None, 4.0, (4, 16)).throughput_rps);
                light[ix].push(load_with(addr, model, &inputs, None, 2.0, (1, 1)).p50_us);
            }
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let low = |v: &[u64]| v.iter().copied().min().unwrap_or(0) as f64;
        println!(
            "{model}: saturation off {:.0} / on {:.0} req/s = {:.2}x (runs off {:?}, on {:?}) | one at a time p50 off {:.0} / on {:.0} us = {:.3}x (runs off {:?}, on {:?})",
            best(&sat[0]),
            best(&sat[1]),
            best(&sat[1]) / best(&sat[0]),
            sat[0].iter().map(|r| r.round()).collect::<Vec<_>>(),
            sat[1].iter().map(|r| r.round()).collect::<Vec<_>>(),
            low(&light[0]),
            low(&light[1]),
            low(&light[1]) / low(&light[0]),
            light[0],
            light[1],
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let pinned = std::env::args().any(|a| a == "--pinned");
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

    const SERVER_CPUS: &[usize] = &[0];
    if pinned {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(cpus >= 2, "--pinned needs two CPUs");
        // The load generator (this thread and the ones it starts) off the server's CPU.
        pin(1..cpus);
        println!(
            "# inferd vs its in-process ceiling, pinned: ceiling and daemon (1 worker) on CPU 0, load generator on CPUs 1-{}; each model served alone by a daemon of its own, as a deployment of it would be (io_preempt = auto decides from the models served)",
            cpus - 1
        );
        for model in &models {
            let repo =
                std::env::temp_dir().join(format!("inferd-serving-{}-{model}", std::process::id()));
            let _ = std::fs::remove_dir_all(&repo);
            copy_dir(&root.join("models").join(model), &repo.join(model));
            let (mut child, addr) = spawn_pinned_daemon(&repo, &[]);
            compare(&root, &registry, model, addr, 1, Some(SERVER_CPUS));
            child.kill().unwrap();
            child.wait().unwrap();
            let _ = std::fs::remove_dir_all(&repo);
        }
        // Batching off and on, both daemons serving the whole repository.
        let (mut child, on) = spawn_pinned_daemon(&root.join("models"), &[]);
        batching_off_vs_on(&root, &registry, &models, on);
        child.kill().unwrap();
        child.wait().unwrap();
    } else {
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            models: Some(root.join("models")),
            workers: Some(WORKERS),
            ..ServeArgs::default()
        };
        let server = InProcess::start(&args, Arc::clone(&repository));
        println!(
            "# inferd vs its in-process ceiling ({WORKERS} workers, load generator on the same cores)"
        );
        for model in &models {
            compare(&root, &registry, model, server.addr, WORKERS, None);
        }
        server.stop();
    }
}

/// One model: its in-process ceiling, then inferd at `addr` at saturation and at half of it.
fn compare(
    root: &Path,
    registry: &Registry,
    model: &str,
    addr: std::net::SocketAddr,
    workers: usize,
    ceiling_cpus: Option<&'static [usize]>,
) {
    let inputs = sample(&root.join("models").join(model).join("1"));
    // Ceiling and saturation alternate, ROUNDS times each, and the ratio is the median of the
    // rounds' ratios: this machine's speed drifts within a minute by more than the gaps measured,
    // and measuring one side first would hand that drift to one of them.
    let mut rounds: Vec<(f64, Duration, Report)> = (0..ROUNDS)
        .map(|_| {
            let (rps, p50) = ceiling(registry, model, &inputs, 2.0, workers, ceiling_cpus);
            (rps, p50, load(addr, model, &inputs, None, 3.0))
        })
        .collect();
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|(c, _, s)| s.throughput_rps / c)
        .collect();
    rounds.sort_by(|a, b| (a.2.throughput_rps / a.0).total_cmp(&(b.2.throughput_rps / b.0)));
    let (ceiling_rps, ceiling_p50, sat) = rounds.swap_remove(ROUNDS / 2);
    // What tract does with whole batches: the bound for a batching daemon, whose saturation can
    // pass the one-request-per-run ceiling above.
    let batched = registry
        .get(model, None)
        .unwrap()
        .batch
        .clone()
        .map(|axes| {
            let one = in_model_order(registry, model, &inputs);
            let rows = vec![one.as_slice(); BATCH_ROWS];
            let stacked = inferd::scheduler::batch::stack(&rows, &axes.inputs);
            let (runs, _) = ceiling(registry, model, &stacked, 3.0, workers, ceiling_cpus);
            runs * BATCH_ROWS as f64
        });
    let half = load(addr, model, &inputs, Some(sat.throughput_rps * 0.5), 5.0);
    let errors: u64 = sat.errors.values().chain(half.errors.values()).sum();
    println!(
        "{model}: ceiling {ceiling_rps:.0} req/s (p50 {:.3} ms) | inferd saturation {:.0} req/s = {:.2}x ceiling (median of {ROUNDS} alternating rounds: {}) | at 50% ({:.0} req/s) p50 {:.3} ms p99 {:.3} ms (generator lag p99 {:.3} ms); p99 - ceiling p50 = {:.0} us | errors {errors}",
        ceiling_p50.as_secs_f64() * 1e3,
        sat.throughput_rps,
        sat.throughput_rps / ceiling_rps,
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", "),
        sat.throughput_rps * 0.5,
        half.p50_us as f64 / 1e3,
        half.p99_us as f64 / 1e3,
        half.send_lag_p99_us.unwrap_or(0) as f64 / 1e3,
        half.p99_us as f64 - ceiling_p50.as_secs_f64() * 1e6,
    );
    if let Some(rows_per_s) = batched {
        println!(
            "{model}: batched ceiling (tract on {BATCH_ROWS}-row batches) {rows_per_s:.0} rows/s | inferd saturation = {:.2}x of it",
            sat.throughput_rps / rows_per_s
        );
    }
}
