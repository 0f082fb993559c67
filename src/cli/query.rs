//! `inferd models`, `inferd ping`, `inferd health` and `inferd reload`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::ClientArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The daemon's metrics and health address (`--metrics-listen`): show every version in the
    /// repository with its state and why, from its /models page.
    #[arg(long, env = "INFERD_HTTP_ADDR")]
    pub http: Option<SocketAddr>,
    /// With --http: print the /models JSON as it is.
    #[arg(long, requires = "http")]
    pub json: bool,
}

pub fn models(args: &ModelsArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.http {
        return repository_status(
            addr,
            args.json,
            Duration::from_millis(args.client.timeout_ms),
        );
    }
    let client = args.client.connect()?;
    let listing = client.list_models()?;
    for (name, version) in &listing.models {
        let info = client.model_info(name, Some(*version))?;
        let header = if info.description.is_empty() {
            String::new()
        } else {
            format!("  {}", info.description)
        };
        println!("{name} v{version}{header}");
        for i in &info.inputs {
            println!("    in  {i}");
        }
        for o in &info.outputs {
            println!("    out {o}");
        }
    }
    if listing.truncated {
        println!("(more models are served than one listing holds)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `GET /models`: one line per version, state and reason.
fn repository_status(addr: SocketAddr, json: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    let body = crate::client::http::get(addr, "/models", timeout).map_err(anyhow::Error::msg)?;
    if json {
        print!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let status: serde_json::Value = serde_json::from_str(&body).context("parsing /models")?;
    println!(
        "repository {}",
        status["repository"].as_str().unwrap_or("?")
    );
    println!(
        "{:<24} {:>7} {:<8} {:>7} {:>6} {:>9} {:>6} {:>8} {:>11} {:>8}  reason",
        "model",
        "version",
        "state",
        "default",
        "pinned",
        "load ms",
        "cache",
        "batching",
        "weights MiB",
        "RSS MiB"
    );
    for v in status["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let num = |key: &str, scale: f64| {
            v[key]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |x| format!("{:.1}", x / scale))
        };
        let yes = |key: &str| {
            if v[key].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        };
        println!(
            "{:<24} {:>7} {:<8} {:>7} {:>6} {:>9} {:>6} {:>8} {:>11} {:>8}  {}",
            v["name"].as_str().unwrap_or("?"),
            v["version"].as_u64().unwrap_or(0),
            v["state"].as_str().unwrap_or("?"),
            yes("default"),
            yes("pinned"),
            num("load_ms", 1.0),
            v["cache"].as_str().unwrap_or("-"),
            v["batching"].as_str().unwrap_or("-"),
            num("weights_bytes", 1024.0 * 1024.0),
            num("resident_bytes", 1024.0 * 1024.0),
            v["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ping(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let client = args.connect()?;
    let connected = started.elapsed();
    let t = Instant::now();
    client.ping()?;
    println!(
        "{} at {}: connect+hello {:.3} ms, ping {:.3} ms",
        client.inner().server(),
        args.addr,
        connected.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

pub fn reload(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    args.connect()?.reload()?;
    println!(
        "{} reloaded its TLS material and access policy and is rescanning its models",
        args.addr
    );
    Ok(ExitCode::SUCCESS)
}

pub fn health(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let state = args.connect()?.health()?;
    println!("{} is {state:?}", args.addr);
    Ok(if state == inferd_proto::ServingState::Ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
