//! A cross-built server (`cross/test`: the aarch64 or armv7 static binary under qemu-user, or the
//! x86_64 one on an emulated AVX2-only CPU), checked from this native test binary: it starts,
//! reports the kernels tract may pick there, serves every shipped model with outputs equal to
//! onnxruntime's references, and drains on SIGTERM. Skipped unless `INFERD_CROSS_SERVER` names the
//! command that runs it, e.g. `qemu-aarch64-static path/to/inferd`.

use std::process::Command;
use std::time::Duration;

use crate::harness::{listening_addr, models_dir, spawn_logged, wait_for};

#[test]
fn cross_built_server_serves_every_shipped_model_with_the_reference_outputs() {
    let Ok(command) = std::env::var("INFERD_CROSS_SERVER") else {
        eprintln!("INFERD_CROSS_SERVER not set: no cross-built server to check");
        return;
    };
    let mut words = command.split_whitespace();
    let program = words.next().expect("a command");
    let mut server = Command::new(program);
    server
        .args(words)
        .args(["serve", "--workers", "1", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "off", "--models"])
        .arg(models_dir());
    let (child, lines) = spawn_logged(server);
    // Killed if a check below fails, so that no emulated server outlives the test.
    let mut child = crate::harness::KillOnDrop(child);
    // Emulated, loading and warming five models takes a while.
    let limit = Duration::from_secs(300);
    let kernels = wait_for(&lines, "tract kernels: ", limit);
    let kernels = kernels.split("tract kernels: ").nth(1).unwrap_or("");
    eprintln!("cross-built server: tract kernels: {kernels}");
    let addr = listening_addr(&wait_for(&lines, "listening on ", limit));
    if command.contains("aarch64") {
        assert!(
            kernels.starts_with("aarch64 ") && kernels.contains("arm64simd_mmm_f32"),
            "tract should pick its NEON kernels: {kernels}"
        );
    } else if command.contains("arm") {
        assert!(
            kernels.starts_with("arm neon") && kernels.contains("armv7neon_mmm_f32"),
            "tract should pick its NEON kernels: {kernels}"
        );
    } else if command.contains("-cpu Haswell") {
        // AVX2 and FMA, nothing of AVX-512: the f32 models run on tract's FMA kernels, and its
        // int8 kernels are the AVX2 ones of patches/ (0001 re-encoded one, 0002 added the other).
        assert!(
            kernels.starts_with("x86_64 ")
                && kernels.contains("fma_mmm_f32")
                && kernels.contains("avx2_mmm_i32_8x8")
                && kernels.contains("avx2k4_mmm_i32_8x8")
                && !kernels.contains("avx512"),
            "an AVX2-only CPU should offer tract's FMA and AVX2 kernels alone: {kernels}"
        );
    }
    crate::models::check_every_shipped_model(addr);
    crate::harness::signal(&child.0, "-TERM");
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}
