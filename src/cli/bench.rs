//! `inferd bench`: a load generator in the style of wrk2 / perf_analyzer, speaking our protocol.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::ClientArgs;
use crate::loadgen::{self, inputs, LoadPlan};

/// Flags of `inferd bench` (scripts depend on these names).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server to load.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Model version (default: the newest served).
    #[arg(long)]
    pub version: Option<u32>,
    /// An input as NAME=FILE.npy (repeat per input); without any, random inputs within the model's
    /// declared shapes are used.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Size given to symbolic dimensions of random inputs (the batch size, say).
    #[arg(long, default_value_t = 1)]
    pub symbol_size: u64,
    /// Connections to open.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Closed loop: requests in flight per connection (pipelining depth).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Open loop: target requests per second, Poisson arrivals, latency from the intended send time.
    /// Without it the load is closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Length of the measured phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Length of the discarded warm-up phase, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Deadline sent with each request, milliseconds.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Print the report as JSON (no progress line).
    #[arg(long)]
    pub json: bool,
    /// Seed of the arrival process and of random inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The server's metrics address (its --metrics-listen): also report the batch sizes the server
    /// formed for this model during the measured phase.
    #[arg(long, value_name = "IP:PORT")]
    pub server_metrics: Option<std::net::SocketAddr>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let valid_warmup = args.warmup.is_finite() && args.warmup >= 0.0;
    if !positive(args.duration) || !valid_warmup {
        anyhow::bail!("--duration must be positive and --warmup not negative");
    }
    if args.rate.is_some_and(|r| !positive(r)) {
        anyhow::bail!("--rate must be positive");
    }
    let inputs = if args.inputs.is_empty() {
        let client = args.client.connect()?;
        let info = client
            .model_info(&args.model, args.version)
            .context("describing the model")?;
        let mut rng = inputs::Rng::new(args.seed);
        info.inputs
            .iter()
            .map(|spec| inputs::random(spec, args.symbol_size, &mut rng))
            .collect()
    } else {
        super::infer::read_inputs(&args.inputs)?
    };
    let plan = LoadPlan {
        addr: args.client.addr,
        options: args.client.options()?,
        model: args.model.clone(),
        version: args.version,
        inputs,
        connections: args.concurrency.max(1),
        depth: args.depth.max(1),
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        deadline: args.deadline_ms.map(Duration::from_millis),
        progress: !args.json,
        seed: args.seed,
        server_metrics: args.server_metrics,
    };
    let report = loadgen::run(&plan)
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", args.client.addr))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}
