//! A digest of the source files whose code decides the graph the prepared-model cache stores (the
//! ONNX import and inferd's repairs and rewrites before serialisation), passed to the crate as
//! `INFERD_IMPORT_DIGEST` and made part of every cache key: a binary whose import changed never
//! reads an entry written by another, without anyone having to remember to bump a format number.
//! The patch series we apply to dependencies (`patches/*/*.patch`) count too: a patched tract may
//! import differently from the published one the key's engine version names.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a build that cannot read its own sources should stop"
)]

/// The files read; `src/model/cache.rs` has a test that this list names every file of
/// `src/model/runtime/` that runs before serialisation.
const IMPORT_SOURCES: [&str; 6] = [
    "src/model/runtime/mod.rs",
    "src/model/runtime/traps.rs",
    "src/model/runtime/weights.rs",
    "src/model/runtime/quantize.rs",
    "src/model/runtime/depthwise.rs",
    "src/model/runtime/zero_points.rs",
];

fn main() {
    // FNV-1a, 64 bits: stable across toolchains, and enough to tell two versions of these files apart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let files = IMPORT_SOURCES
        .iter()
        .map(std::path::PathBuf::from)
        .chain(patch_series());
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=INFERD_IMPORT_DIGEST={hash:016x}");
}

/// Every `patches/<crate>-<version>/*.patch`, in a stable order. The series folders are watched
/// too, so that adding a patch reruns this script.
fn patch_series() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(dirs) = std::fs::read_dir("patches") else {
        return files;
    };
    for dir in dirs.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let patches: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "patch"))
            .collect();
        if !patches.is_empty() {
            println!("cargo:rerun-if-changed={}", dir.display());
            files.extend(patches);
        }
    }
    files.sort();
    files
}
