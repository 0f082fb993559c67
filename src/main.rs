//! The `inferd` binary: parse the command line, set up logging, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = inferd::cli::Cli::parse();
    inferd::logging::init();
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));
    match inferd::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("inferd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
