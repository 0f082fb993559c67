//! int8 against fp32 in tract, one thread, in one run (`cargo bench --bench int8`):
//!
//! for every shipped model with an int8 variant (and for any extra variants given with
//! `-- --extra DIR`, a folder of `<model>/<variant>.onnx` as `benches/int8_variants.py` writes),
//! the median latency of a warm single-thread loop on the model's sample, the ratio to the fp32
//! variant measured in the same run, and where the time goes: tract's per-node timing of the
//! optimised plan, summed by operator, as a share of the total.
//!
//! A model that is not shipped brings its `model.toml` and `sample/` in its extra folder.
//! `-- --runs N` sets the timed runs per variant (default 200; the profile uses a quarter of them);
//! `-- --nodes N` also lists each variant's N slowest nodes, by name, below the table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inferd::model::manifest::Manifest;
use inferd::model::Runtime;
use inferd::tensor::HostTensor;

/// fp32 model folder, its shipped int8 variant.
const PAIRS: [(&str, &str); 2] = [
    ("digits-mlp", "digits-mlp-int8"),
    ("silero-vad", "silero-vad-int8"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where a model's manifest and sample are: `models/<model>/1` for a shipped model, else the
/// extra variant's own folder (`<extra>/<model>/model.toml` and `sample/`), for models not shipped
/// (all-MiniLM-L6-v2, say).
fn model_dir(model: &str, onnx: &Path) -> PathBuf {
    let shipped = root().join("models").join(model).join("1");
    if shipped.is_dir() {
        shipped
    } else {
        onnx.parent().unwrap().to_path_buf()
    }
}

/// Loads an ONNX file with the facts of its model's manifest.
fn load(model: &str, onnx: &Path) -> Result<Runtime, String> {
    let manifest = Manifest::load(&model_dir(model, onnx)).map_err(|e| e.to_string())?;
    let facts = manifest
        .as_ref()
        .map(|m| m.inputs.as_slice())
        .filter(|f| !f.is_empty());
    Runtime::load(onnx, facts)
}

fn sample(model: &str, onnx: &Path) -> Vec<HostTensor> {
    inferd::npy::read_folder(&model_dir(model, onnx).join("sample")).unwrap()
}

fn median_run(runtime: &Runtime, inputs: &[HostTensor], runs: u32) -> Duration {
    for _ in 0..runs.div_ceil(10) {
        runtime.run(inputs.to_vec()).unwrap();
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let input = inputs.to_vec();
            let started = Instant::now();
            runtime.run(input).unwrap();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The operators that take the most time, with their share: `OptMatMul 61 %, …`.
/// The operators' shares of the run, largest first, and the `nodes` slowest nodes.
fn profile(runtime: &Runtime, inputs: &[HostTensor], runs: u32, nodes: usize) -> (String, String) {
    let mut timed = runtime.profile(inputs, runs.max(1)).unwrap();
    let total: Duration = timed.iter().map(|n| n.total).sum();
    let share = |t: Duration| 100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12);
    let mut by_op: BTreeMap<String, Duration> = BTreeMap::new();
    for n in &timed {
        *by_op.entry(n.op.clone()).or_default() += n.total;
    }
    timed.sort_by_key(|n| std::cmp::Reverse(n.total));
    let slowest = timed
        .iter()
        .take(nodes)
        .map(|n| format!("  {:5.1} %  {} ({})", share(n.total), n.node, n.op))
        .collect::<Vec<_>>()
        .join("\n");
    let mut ops: Vec<(String, Duration)> = by_op.into_iter().collect();
    ops.sort_by_key(|op| std::cmp::Reverse(op.1));
    let by_op = ops
        .iter()
        .take(5)
        .map(|(op, t)| format!("{op} {:.0} %", share(*t)))
        .collect::<Vec<_>>()
        .join(", ");
    (by_op, slowest)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: u32 = flag("--runs").map_or(200, |r| r.parse().unwrap());
    let nodes: usize = flag("--nodes").map_or(0, |n| n.parse().unwrap());
    let mut slowest = Vec::new();
    let extra = flag("--extra").map(PathBuf::from);
    println!(
        "# int8 vs fp32 in tract ({}), one thread, median of {runs} warm runs on each model's sample",
        inferd::model::runtime::ENGINE
    );
    println!("# kernels: {}", inferd::model::runtime::kernels());
    println!("| model | variant | p50 ms | fp32 p50 / this p50 | where the time goes (tract per-node timing) |");
    println!("|---|---|---|---|---|");
    let mut rows: Vec<(String, String, PathBuf)> = Vec::new();
    for (fp32, int8) in PAIRS {
        rows.push((
            fp32.into(),
            "fp32".into(),
            root().join("models").join(fp32).join("1/model.onnx"),
        ));
        rows.push((
            fp32.into(),
            format!("{int8} (shipped)"),
            root().join("models").join(int8).join("1/model.onnx"),
        ));
    }
    if let Some(dir) = &extra {
        let mut found: Vec<(String, String, PathBuf)> = Vec::new();
        for model in std::fs::read_dir(dir).unwrap() {
            let model = model.unwrap().path();
            let name = model.file_name().unwrap().to_string_lossy().into_owned();
            for file in std::fs::read_dir(&model).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_some_and(|e| e == "onnx") {
                    let variant = file.file_stem().unwrap().to_string_lossy().into_owned();
                    found.push((name.clone(), variant, file));
                }
            }
        }
        // fp32 first within each model, so ratios have their baseline.
        found.sort_by(|a, b| (&a.0, a.1 != "fp32", &a.1).cmp(&(&b.0, b.1 != "fp32", &b.1)));
        rows.extend(found);
    }
    let mut baseline: BTreeMap<String, Duration> = BTreeMap::new();
    for (model, variant, onnx) in rows {
        let runtime = match load(&model, &onnx) {
            Ok(r) => r,
            Err(e) => {
                let first = e
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect::<String>();
                println!("| {model} | {variant} | — | — | tract cannot load it: {first} |");
                continue;
            }
        };
        let inputs = sample(&model, &onnx);
        let p50 = median_run(&runtime, &inputs, runs);
        if variant == "fp32" {
            baseline.insert(model.clone(), p50);
        }
        let ratio = baseline.get(&model).map_or_else(
            || "—".to_owned(),
            |b| format!("{:.2}×", b.as_secs_f64() / p50.as_secs_f64()),
        );
        let (by_op, nodes) = profile(&runtime, &inputs, runs / 4, nodes);
        println!(
            "| {model} | {variant} | {:.3} | {ratio} | {by_op} |",
            p50.as_secs_f64() * 1e3,
        );
        slowest.push(format!("{model} {variant}:\n{nodes}"));
    }
    if nodes > 0 {
        println!(
            "\nslowest nodes (share of the profiled run):\n{}",
            slowest.join("\n")
        );
    }
}
