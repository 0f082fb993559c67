//! The `inferd` binary: parse the command line, set up logging, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// musl's allocator maps and unmaps every large block (Cargo.toml says what that cost); the static
/// builds use mimalloc instead. glibc's allocator reuses freed memory already.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
