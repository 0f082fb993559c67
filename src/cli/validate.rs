//! `inferd validate`: two variants of a model (fp32 and int8, say) over one data set, latency and
//! quality side by side, pass or fail against declared thresholds.
//!
//! Both variants are loaded exactly as the daemon loads them (manifest, repairs, warm-up) and run
//! in this process on one thread, alternating sample by sample so that a noisy machine slows both
//! alike. Quality is measured on the first pass; later passes only time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::model::load::load_version;
use crate::model::ServedModel;
use crate::quality::{failures, DataSet, OutputQuality, Thresholds};
use crate::tensor::HostTensor;

/// Flags of `inferd validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// The reference variant's version folder, e.g. models/digits-mlp/1.
    #[arg(long)]
    pub reference: PathBuf,
    /// The variant under test, e.g. models/digits-mlp-int8/1.
    #[arg(long)]
    pub candidate: PathBuf,
    /// The data set: one <input>.npy per model input. Axis 0 indexes the samples (each runs as a
    /// batch of one), except in a file whose shape is the input's declared shape with any symbol at
    /// 1, which every sample shares.
    #[arg(long)]
    pub data: PathBuf,
    /// A float output that holds class scores or probabilities (repeat per output): its decisions
    /// are compared (argmax over the last axis; a single probability by which side of 0.5 it falls).
    /// Integer outputs (labels) are always compared.
    #[arg(long = "classes", value_name = "OUTPUT")]
    pub classes: Vec<String>,
    /// Feed this output back as that input on the next sample, per variant (a recurrent model's
    /// state; repeat per pair). Samples then run in order, and the data set's value of the input
    /// is only the first sample's.
    #[arg(long = "carry", value_name = "OUTPUT=INPUT")]
    pub carry: Vec<String>,
    /// Use at most this many samples (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Timed runs of every sample per variant (quality is measured on the first).
    #[arg(long, default_value_t = 3)]
    pub passes: u32,
    /// Fail below this agreement: same argmax (float outputs with classes) or same value (integer
    /// outputs such as labels), as a fraction of decisions.
    #[arg(long, default_value_t = 0.99)]
    pub min_agreement: f64,
    /// Fail below this mean cosine similarity on float outputs of more than one element.
    #[arg(long, default_value_t = 0.99)]
    pub min_cosine: f64,
    /// Fail above this absolute difference on any float element.
    #[arg(long)]
    pub max_abs: Option<f64>,
    /// Fail when the candidate's p50 is above this multiple of the reference's (0.667 demands a
    /// 1.5x speed-up).
    #[arg(long)]
    pub max_latency_ratio: Option<f64>,
    /// Print the report as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// One variant's timings.
struct Timing {
    runs: Vec<Duration>,
}

impl Timing {
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.runs.clone();
        sorted.sort_unstable();
        let ix = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(ix).copied().unwrap_or_default()
    }
}

/// Runs the comparison; exit status 0 when every threshold holds, 1 otherwise.
///
/// # Errors
/// A variant that does not load, a data set that does not fit the reference's inputs, variants
/// whose outputs differ in name, dtype or shape, or a failed run.
pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let reference = load(&args.reference)?;
    let candidate = load(&args.candidate)?;
    let specs = reference.runtime.inputs();
    if candidate.runtime.inputs().len() != specs.len()
        || candidate
            .runtime
            .inputs()
            .iter()
            .zip(specs)
            .any(|(c, r)| c.name != r.name || c.dtype != r.dtype)
    {
        anyhow::bail!(
            "the variants take different inputs: {:?} and {:?}",
            specs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            candidate
                .runtime
                .inputs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }
    let data = DataSet::read(&args.data, specs).map_err(anyhow::Error::msg)?;
    let samples = args.limit.map_or(data.len(), |l| l.min(data.len()));
    if samples == 0 {
        anyhow::bail!("{}: the data set has no samples", args.data.display());
    }
    let outputs = reference.runtime.outputs();
    for name in &args.classes {
        if !outputs.iter().any(|o| &o.name == name) {
            anyhow::bail!("--classes {name}: the model has no such output");
        }
    }
    let carry = carried(&args.carry, &reference)?;
    let mut quality: Vec<OutputQuality> = outputs
        .iter()
        .map(|o| {
            let mut q = OutputQuality::new(&o.name, args.classes.contains(&o.name));
            q.gated = !carry.iter().any(|(output, _)| output == &o.name);
            q
        })
        .collect();
    let passes = args.passes.max(1);
    let mut timings = [
        Timing {
            runs: Vec::with_capacity(samples * passes as usize),
        },
        Timing {
            runs: Vec::with_capacity(samples * passes as usize),
        },
    ];
    for pass in 0..passes {
        // Each variant carries its own state; every pass starts from the data set's.
        let mut state: [Vec<HostTensor>; 2] = [Vec::new(), Vec::new()];
        for ix in 0..samples {
            let inputs = data.sample(ix);
            let (r, rt) = timed(&reference, with_state(&inputs, &state[0]), ix)?;
            let (c, ct) = timed(&candidate, with_state(&inputs, &state[1]), ix)?;
            timings[0].runs.push(rt);
            timings[1].runs.push(ct);
            state = [take_state(&r, &carry), take_state(&c, &carry)];
            if pass == 0 {
                compare(&mut quality, &r, &c)?;
            }
        }
    }
    let thresholds = Thresholds {
        min_agreement: args.min_agreement,
        min_cosine: args.min_cosine,
        max_abs: args.max_abs,
    };
    let mut failed = failures(&quality, &thresholds);
    let (rp50, cp50) = (timings[0].quantile(0.5), timings[1].quantile(0.5));
    let ratio = cp50.as_secs_f64() / rp50.as_secs_f64().max(1e-12);
    if let Some(limit) = args.max_latency_ratio.filter(|l| ratio > *l) {
        failed.push(format!(
            "latency: candidate p50 is {ratio:.2}x the reference's, above {limit}x"
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json(args, samples, &timings, &quality, &failed))?
        );
    } else {
        print_table(args, samples, &timings, &quality, &failed);
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Loads a version folder `<root>/<name>/<version>` as the daemon would (one warm-up run).
fn load(vdir: &Path) -> anyhow::Result<ServedModel> {
    let version = vdir
        .file_name()
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse::<u32>().ok())
        .with_context(|| format!("{}: not a version folder (<name>/<number>)", vdir.display()))?;
    let name = vdir
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_owned();
    load_version(vdir, &name, version, 1, 1, 0, None)
        .map(|(model, _)| model)
        .with_context(|| format!("loading {}", vdir.display()))
}

/// Parses `--carry OUTPUT=INPUT` pairs against the model.
fn carried(pairs: &[String], model: &ServedModel) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            let (output, input) = pair
                .split_once('=')
                .with_context(|| format!("--carry {pair}: expected OUTPUT=INPUT"))?;
            let out = model.runtime.outputs().iter().find(|o| o.name == output);
            let inp = model.runtime.inputs().iter().find(|i| i.name == input);
            match (out, inp) {
                (Some(o), Some(i)) if o.dtype == i.dtype => {
                    Ok((output.to_owned(), input.to_owned()))
                }
                (Some(_), Some(_)) => anyhow::bail!("--carry {pair}: the dtypes differ"),
                _ => anyhow::bail!("--carry {pair}: the model has no such output or input"),
            }
        })
        .collect()
}

/// The carried outputs of one run, renamed to the inputs they feed.
fn take_state(outputs: &[HostTensor], carry: &[(String, String)]) -> Vec<HostTensor> {
    carry
        .iter()
        .filter_map(|(output, input)| {
            outputs
                .iter()
                .find(|t| &t.name == output)
                .map(|t| HostTensor {
                    name: input.clone(),
                    ..t.clone()
                })
        })
        .collect()
}

/// `inputs` with any carried state in place of the data set's value.
fn with_state(inputs: &[HostTensor], state: &[HostTensor]) -> Vec<HostTensor> {
    inputs
        .iter()
        .map(|t| state.iter().find(|s| s.name == t.name).unwrap_or(t).clone())
        .collect()
}

fn timed(
    model: &ServedModel,
    inputs: Vec<HostTensor>,
    ix: usize,
) -> anyhow::Result<(Vec<HostTensor>, Duration)> {
    let started = Instant::now();
    let outputs = model
        .runtime
        .run(inputs)
        .map_err(|e| anyhow::anyhow!("{} v{} on sample {ix}: {e}", model.name, model.version))?;
    Ok((outputs, started.elapsed()))
}

fn compare(
    quality: &mut [OutputQuality],
    reference: &[HostTensor],
    candidate: &[HostTensor],
) -> anyhow::Result<()> {
    for q in quality.iter_mut() {
        let r = reference.iter().find(|t| t.name == q.name);
        let c = candidate.iter().find(|t| t.name == q.name);
        match (r, c) {
            (Some(r), Some(c)) => q.add(r, c).map_err(anyhow::Error::msg)?,
            _ => anyhow::bail!("the candidate has no output {:?}", q.name),
        }
    }
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn print_table(
    args: &ValidateArgs,
    samples: usize,
    timings: &[Timing; 2],
    quality: &[OutputQuality],
    failed: &[String],
) {
    let passes = args.passes.max(1);
    println!(
        "{samples} samples from {}, {passes} timed passes, one thread",
        args.data.display()
    );
    let rp50 = timings[0].quantile(0.5);
    for (label, path, t) in [
        ("reference", &args.reference, &timings[0]),
        ("candidate", &args.candidate, &timings[1]),
    ] {
        let p50 = t.quantile(0.5);
        println!(
            "{label:<10} {:<28} p50 {:>9.1} µs  p99 {:>9.1} µs  speed {:.2}x",
            path.display(),
            us(p50),
            us(t.quantile(0.99)),
            rp50.as_secs_f64() / p50.as_secs_f64().max(1e-12)
        );
    }
    println!(
        "{:<24} {:>10} {:>10} {:>18} {:>18}",
        "output", "max abs", "mean abs", "cosine mean/min", "agreement"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3e}"));
    for q in quality {
        let cosine = match (q.cosine_mean, q.cosine_min) {
            (Some(m), Some(n)) => format!("{m:.5}/{n:.5}"),
            _ => "-".to_owned(),
        };
        let agreement = match (q.agreement, q.agreement_kind) {
            (Some(a), Some(kind)) => format!("{:.2} % {kind}", a * 100.0),
            _ => "-".to_owned(),
        };
        println!(
            "{:<24} {:>10} {:>10} {cosine:>18} {agreement:>18}{}",
            q.name,
            num(q.max_abs),
            num(q.mean_abs),
            if q.gated {
                ""
            } else {
                "  (carried state: not gated)"
            }
        );
    }
    let limits = format!(
        "agreement >= {:.2} %, mean cosine >= {}{}{}",
        args.min_agreement * 100.0,
        args.min_cosine,
        args.max_abs
            .map_or_else(String::new, |m| format!(", max abs <= {m:e}")),
        args.max_latency_ratio
            .map_or_else(String::new, |m| format!(", p50 ratio <= {m}"))
    );
    if failed.is_empty() {
        println!("PASS ({limits})");
    } else {
        println!("FAIL ({limits}):");
        for f in failed {
            println!("  {f}");
        }
    }
}

fn json(
    args: &ValidateArgs,
    samples: usize,
    timings: &[Timing; 2],
    quality: &[OutputQuality],
    failed: &[String],
) -> serde_json::Value {
    let variant = |path: &Path, t: &Timing| {
        serde_json::json!({
            "path": path.display().to_string(),
            "p50_us": us(t.quantile(0.5)),
            "p99_us": us(t.quantile(0.99)),
        })
    };
    let (rp50, cp50) = (timings[0].quantile(0.5), timings[1].quantile(0.5));
    serde_json::json!({
        "samples": samples,
        "passes": args.passes.max(1),
        "reference": variant(&args.reference, &timings[0]),
        "candidate": variant(&args.candidate, &timings[1]),
        "speedup": rp50.as_secs_f64() / cp50.as_secs_f64().max(1e-12),
        "outputs": quality.iter().map(|q| serde_json::json!({
            "name": q.name,
            "max_abs": q.max_abs,
            "mean_abs": q.mean_abs,
            "cosine_mean": q.cosine_mean,
            "cosine_min": q.cosine_min,
            "agreement": q.agreement,
            "agreement_kind": q.agreement_kind,
            "gated": q.gated,
        })).collect::<Vec<_>>(),
        "thresholds": {
            "min_agreement": args.min_agreement,
            "min_cosine": args.min_cosine,
            "max_abs": args.max_abs,
            "max_latency_ratio": args.max_latency_ratio,
        },
        "pass": failed.is_empty(),
        "failures": failed,
    })
}
