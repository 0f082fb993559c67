//! `inferd infer`: read `.npy` inputs, run one request, print a summary and optionally save outputs.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use super::InferArgs;
use crate::npy::{self, file_stem};
use crate::tensor::HostTensor;

pub fn run(args: &InferArgs) -> anyhow::Result<ExitCode> {
    let inputs = read_inputs(&args.inputs)?;
    let client = args.client.connect()?;
    let deadline = args.deadline_ms.map(Duration::from_millis);
    let out = client.infer(&args.model, args.version, &inputs, deadline)?;
    println!("{} v{}", out.model, out.version);
    for t in &out.outputs {
        println!("  {} = {}", t.describe(), preview(t));
    }
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for t in &out.outputs {
            let path = dir.join(format!("{}.npy", file_stem(&t.name)));
            write(&path, t)?;
            println!("  wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, t: &HostTensor) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    npy::write(BufWriter::new(file), t).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads `NAME=FILE.npy` arguments.
pub(super) fn read_inputs(specs: &[String]) -> anyhow::Result<Vec<HostTensor>> {
    let mut inputs = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--input {spec:?}: expected NAME=FILE.npy");
        };
        inputs.push(
            npy::read_file(Path::new(path), name).with_context(|| format!("reading {path}"))?,
        );
    }
    Ok(inputs)
}

/// The first few values, for a human glance.
fn preview(t: &HostTensor) -> String {
    const SHOW: usize = 8;
    let values: Vec<String> = if let Some(v) = t.as_f32() {
        v.iter().take(SHOW).map(|x| format!("{x:.6}")).collect()
    } else if let Some(v) = t.as_i64() {
        v.iter().take(SHOW).map(i64::to_string).collect()
    } else {
        return format!("{} bytes", t.data.len());
    };
    let count = t.data.len() / t.dtype.size();
    let more = if count > SHOW { ", …" } else { "" };
    format!("[{}{more}]", values.join(", "))
}
