//! `inferd certs`: a development PKI in one command, so that TLS can be tried in two.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::certs::Ca;

/// Flags of `inferd certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Folder to write ca.pem, server.pem, server.key, device.pem, device.key into (created).
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Names the server certificate is valid for (DNS names or IP addresses); repeatable.
    #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub server_names: Vec<String>,
    /// Identity of the device certificate (its CN and DNS SAN).
    #[arg(long, default_value = "device-1")]
    pub device: String,
}

pub fn run(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    let ca = Ca::new("inferd development CA").context("creating the CA")?;
    let server = ca
        .server(&args.server_names, 1)
        .context("creating the server certificate")?;
    let device = ca
        .device(&args.device, 2)
        .context("creating the device certificate")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write(&args.out, "ca.pem", &ca.cert_pem, false)?;
    write(&args.out, "ca.key", &ca.key_pem, true)?;
    write(&args.out, "server.pem", &server.cert_pem, false)?;
    write(&args.out, "server.key", &server.key_pem, true)?;
    write(&args.out, "device.pem", &device.cert_pem, false)?;
    write(&args.out, "device.key", &device.key_pem, true)?;
    println!(
        "wrote a development CA, a server certificate for {} and a device certificate for {:?} to {}",
        args.server_names.join(", "),
        args.device,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
