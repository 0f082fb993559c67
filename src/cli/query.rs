//! `inferd models`, `inferd ping`, `inferd health` and `inferd reload`.

use std::process::ExitCode;
use std::time::Instant;

use super::ClientArgs;

pub fn models(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let client = args.connect()?;
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
    println!("{} reloaded its TLS material and access policy", args.addr);
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
