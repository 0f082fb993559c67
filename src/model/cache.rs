//! The prepared-model cache: each version's graph after import (typed, decluttered, repaired) kept
//! as tract's NNEF archive, so that a restart skips ONNX decoding, type analysis and decluttering
//! and only optimises for this CPU.
//!
//! An entry is a folder `<cache>/<key>/` holding `model.nnef.tar` and `entry.json`. The key is a
//! SHA-256 over everything that decides the prepared graph: the ONNX file's bytes, the manifest's
//! input facts, the engine (tract's version) and inferd's own version and import format. Any change
//! to one of them is a different key, so a changed file is never served from a stale entry; the
//! stale entry is deleted when its replacement for the same model version is written.
//!
//! The cache is an optimisation and never a reason to fail: an unreadable, damaged or unwritable
//! cache is logged and counted, and the version loads from its ONNX file. Entries are written to a
//! temporary folder and renamed into place, so a crash or a concurrent writer never leaves a half
//! entry under a key; `entry.json` records the archive's digest, checked on every read, so a
//! damaged archive is refused rather than served.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use super::runtime::{Prepared, ENGINE};
use super::IoSpec;

/// The layout of an entry (bumped if `entry.json` or the archive's use changes). Changes to the
/// import code itself are in the key through `INFERD_IMPORT_DIGEST` (see `build.rs`).
const FORMAT: &str = "inferd-prepared-1";
const ARCHIVE: &str = "model.nnef.tar";
const INDEX: &str = "entry.json";
/// Temporary folders older than this are a crashed writer's leftovers, removed when the cache opens.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a load found in the cache (`inferd_model_cache_lookups_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The prepared graph was read from the cache.
    Hit,
    /// No entry: imported from ONNX; an entry is written once the version has warmed up.
    Miss,
    /// An entry existed but was damaged or unreadable: deleted, imported from ONNX, rewritten.
    Invalid,
}

impl Lookup {
    const ALL: [Lookup; 3] = [Lookup::Hit, Lookup::Miss, Lookup::Invalid];

    /// The `outcome` label, also the `cache` field of `/models`.
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Invalid => "invalid",
        }
    }
}

/// What became of an entry to write (`inferd_model_cache_writes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// In the cache.
    Written,
    /// The folder refused it (see the log); the next start imports again.
    Failed,
    /// tract cannot serialise this graph (an operator without an NNEF form): imported every time.
    Unsupported,
}

impl Write {
    const ALL: [Write; 3] = [Write::Written, Write::Failed, Write::Unsupported];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Write::Written => "written",
            Write::Failed => "failed",
            Write::Unsupported => "unsupported",
        }
    }
}

/// Counts since start, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Loads by [`Lookup`] label.
    pub lookups: Vec<(&'static str, u64)>,
    /// Entries by [`Write`] label.
    pub writes: Vec<(&'static str, u64)>,
}

/// What `entry.json` records.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: String,
    engine: String,
    /// For people reading the folder, and to find the entries one version replaces.
    model: String,
    version: u32,
    source_sha256: String,
    /// Of the archive, the output names and the repairs: everything read back ([`entry_digest`]).
    sha256: String,
    outputs: Vec<String>,
    repairs: Vec<String>,
}

/// A cache folder and what it did since start.
#[derive(Debug)]
pub struct ModelCache {
    dir: PathBuf,
    lookups: [AtomicU64; Lookup::ALL.len()],
    writes: [AtomicU64; Write::ALL.len()],
}

/// A version imported on a miss, its graph kept until its entry is written: off the load's path, by
/// the model watch thread once the version serves, so that neither start-up nor a swap waits for
/// tract's serialiser (~40 ms of the five shipped models here). Meanwhile it holds the weights as
/// imported, about the version's weights again.
#[derive(Debug)]
pub struct Unwritten {
    key: Key,
    model: String,
    version: u32,
    prepared: Prepared,
}

impl Unwritten {
    /// The entry `prepared` will make for version `version` of `model`.
    pub fn new(key: Key, model: &str, version: u32, prepared: Prepared) -> Unwritten {
        Unwritten {
            key,
            model: model.to_owned(),
            version,
            prepared,
        }
    }
}

/// The cache key of one ONNX file as a given manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    hex: String,
    source: String,
}

impl Key {
    /// Digests the file's bytes with everything else that decides the prepared graph.
    pub fn new(onnx: &[u8], facts: Option<&[IoSpec]>) -> Key {
        let source = hex(ring::digest::digest(&SHA256, onnx).as_ref());
        let mut ctx = Context::new(&SHA256);
        for part in [
            FORMAT,
            ENGINE,
            env!("CARGO_PKG_VERSION"),
            env!("INFERD_IMPORT_DIGEST"),
            source.as_str(),
        ] {
            ctx.update(part.as_bytes());
            ctx.update(b"\n");
        }
        // Facts replace the file's declared inputs, so they are part of the graph; `None` and an
        // empty list differ from every list of specs.
        match facts {
            None => ctx.update(b"facts: none\n"),
            Some(facts) => {
                for spec in facts {
                    ctx.update(spec.to_string().as_bytes());
                    ctx.update(b"\n");
                }
            }
        }
        Key {
            hex: hex(ctx.finish().as_ref()),
            source,
        }
    }

    /// The folder name of the entry.
    pub fn as_str(&self) -> &str {
        &self.hex
    }
}

impl ModelCache {
    /// Uses (and creates, if needed) `dir`. Removes leftovers of writers that died mid-entry.
    ///
    /// # Errors
    /// A message if the folder cannot be created; the caller serves without a cache.
    pub fn open(dir: &Path) -> Result<ModelCache, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let stale = entry.file_name().to_string_lossy().starts_with(".tmp-")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_TMP);
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(ModelCache {
            dir: dir.to_owned(),
            lookups: Default::default(),
            writes: Default::default(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the cache did since start.
    pub fn counts(&self) -> Counts {
        Counts {
            lookups: Lookup::ALL
                .iter()
                .zip(&self.lookups)
                .map(|(o, c)| (o.label(), c.load(Ordering::Relaxed)))
                .collect(),
            writes: Write::ALL
                .iter()
                .zip(&self.writes)
                .map(|(o, c)| (o.label(), c.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Looks `key` up for version `version` of `model`: the prepared graph on a hit. A damaged entry
    /// is logged and deleted.
    pub fn lookup(&self, key: &Key, model: &str, version: u32) -> (Lookup, Option<Prepared>) {
        let (lookup, prepared) = match self.get(key) {
            Ok(Some(prepared)) => (Lookup::Hit, Some(prepared)),
            Ok(None) => (Lookup::Miss, None),
            Err(message) => {
                log::warn!("{model} v{version}: prepared-model cache: {message}");
                (Lookup::Invalid, None)
            }
        };
        if let Some(ix) = Lookup::ALL.iter().position(|l| *l == lookup) {
            self.lookups[ix].fetch_add(1, Ordering::Relaxed);
        }
        (lookup, prepared)
    }

    /// The prepared graph under `key`: `Ok(None)` without an entry; `Err` (after deleting it) for an
    /// entry that is damaged or was written for something else.
    ///
    /// # Errors
    /// A message saying what was wrong with the entry, for the log.
    fn get(&self, key: &Key) -> Result<Option<Prepared>, String> {
        let folder = self.dir.join(key.as_str());
        let index = match std::fs::read(folder.join(INDEX)) {
            Ok(index) => index,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", folder.join(INDEX).display())),
        };
        let read = || -> Result<Prepared, String> {
            let index: Index =
                serde_json::from_slice(&index).map_err(|e| format!("{INDEX}: {e}"))?;
            if index.format != FORMAT || index.engine != ENGINE || index.source_sha256 != key.source
            {
                return Err(format!(
                    "{INDEX} describes another entry ({} {}, source {})",
                    index.format, index.engine, index.source_sha256
                ));
            }
            let archive =
                std::fs::read(folder.join(ARCHIVE)).map_err(|e| format!("{ARCHIVE}: {e}"))?;
            let digest = entry_digest(&archive, &index.outputs, &index.repairs);
            if digest != index.sha256 {
                return Err(format!(
                    "the entry has digest {digest}, {INDEX} records {}",
                    index.sha256
                ));
            }
            // A panic in tract's reader is a damaged entry too, not a reason to stop loading.
            std::panic::catch_unwind(|| Prepared::from_nnef(&archive, index.outputs, index.repairs))
                .unwrap_or_else(|_| Err("tract panicked reading the archive".to_owned()))
        };
        read().map(Some).map_err(|message| {
            let _ = std::fs::remove_dir_all(&folder);
            format!("{}: {message}; entry deleted", folder.display())
        })
    }

    /// Serialises and writes an entry, then deletes the entries it replaces (the same model
    /// version under another key: its file or manifest changed). Logged unless written.
    pub fn write(&self, entry: Unwritten) -> Write {
        let result = self.put(&entry);
        let (model, version) = (&entry.model, entry.version);
        match &result {
            Ok(()) => {}
            Err((Write::Unsupported, message)) => log::info!(
                "{model} v{version}: not cached (tract cannot write its prepared form: {message})"
            ),
            Err((_, message)) => {
                log::warn!("{model} v{version}: prepared-model cache not written: {message}");
            }
        }
        let outcome = result.map_or_else(|(w, _)| w, |()| Write::Written);
        if outcome != Write::Failed {
            // Written, or unsupported (no entry will replace the old one): the old one goes.
            self.remove_replaced(&entry.key, model, version);
        }
        if let Some(ix) = Write::ALL.iter().position(|w| *w == outcome) {
            self.writes[ix].fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn put(&self, entry: &Unwritten) -> Result<(), (Write, String)> {
        // On the model watch thread: a panic in tract's writer must not end it.
        let archive =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.prepared.to_nnef()))
                .unwrap_or_else(|_| Err("tract panicked writing the archive".to_owned()))
                .map_err(|message| (Write::Unsupported, message))?;
        let index = Index {
            format: FORMAT.to_owned(),
            engine: ENGINE.to_owned(),
            model: entry.model.clone(),
            version: entry.version,
            source_sha256: entry.key.source.clone(),
            sha256: entry_digest(
                &archive,
                entry.prepared.output_names(),
                entry.prepared.repairs(),
            ),
            outputs: entry.prepared.output_names().to_vec(),
            repairs: entry.prepared.repairs().to_vec(),
        };
        let index = serde_json::to_vec_pretty(&index)
            .map_err(|e| (Write::Failed, format!("{INDEX}: {e}")))?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let key = entry.key.as_str();
        let tmp = self.dir.join(format!(
            ".tmp-{key}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir(&tmp)?;
            std::fs::write(tmp.join(ARCHIVE), &archive)?;
            std::fs::write(tmp.join(INDEX), &index)?;
            std::fs::rename(&tmp, self.dir.join(key))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another writer (a second process on the same folder) got there first: its entry is
            // for the same key, so as good as ours, if it can be read.
            if std::fs::read(self.dir.join(key).join(INDEX)).is_err() {
                return Err((Write::Failed, format!("{}: {e}", self.dir.display())));
            }
        }
        Ok(())
    }

    /// Deletes the entries of `model` version `version` other than `key`'s.
    fn remove_replaced(&self, key: &Key, model: &str, version: u32) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || name == key.as_str() {
                continue;
            }
            let same = std::fs::read(entry.path().join(INDEX))
                .ok()
                .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
                .is_some_and(|i| i.model == model && i.version == version);
            if same {
                log::info!(
                    "prepared-model cache: removing {} (replaced: {model} v{version} changed)",
                    entry.path().display()
                );
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// SHA-256 over the archive and the names stored beside it, each part length-prefixed.
fn entry_digest(archive: &[u8], outputs: &[String], repairs: &[String]) -> String {
    let mut ctx = Context::new(&SHA256);
    let parts = std::iter::once(archive)
        .chain(outputs.iter().map(String::as_bytes))
        .chain(std::iter::once(&b"repairs"[..]))
        .chain(repairs.iter().map(String::as_bytes));
    for part in parts {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DimSpec;
    use inferd_proto::DType;

    fn spec(shape: Vec<DimSpec>) -> IoSpec {
        IoSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape,
        }
    }

    #[test]
    fn the_key_changes_with_the_file_and_with_the_declared_facts() {
        let base = Key::new(b"model bytes", None);
        assert_eq!(base, Key::new(b"model bytes", None));
        assert_eq!(base.as_str().len(), 64);
        assert_ne!(base, Key::new(b"model bytez", None));
        let one = [spec(vec![DimSpec::Fixed(1), DimSpec::Fixed(4)])];
        let sym = [spec(vec![DimSpec::Symbol("N".into()), DimSpec::Fixed(4)])];
        assert_ne!(base, Key::new(b"model bytes", Some(&one)));
        assert_ne!(base, Key::new(b"model bytes", Some(&[])));
        assert_ne!(
            Key::new(b"model bytes", Some(&one)),
            Key::new(b"model bytes", Some(&sym))
        );
        // The source digest alone is the file's: the same for any facts.
        assert_eq!(base.source, Key::new(b"model bytes", Some(&sym)).source);
    }

    #[test]
    fn the_engine_in_the_key_is_the_tract_in_cargo_lock() {
        let lock = include_str!("../../Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"tract-core\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"'))
            .unwrap();
        assert_eq!(ENGINE, format!("tract-{version}"));
    }

    #[test]
    fn build_rs_digests_every_import_source_that_runs_before_serialisation() {
        let build = include_str!("../../build.rs");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/model/runtime");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            // Swapped in on the optimised plan, or a second plan built from the prepared form, after
            // the cache: not part of an entry.
            if ["quantize_linear.rs", "select.rs", "single_row.rs"].contains(&name.as_str()) {
                continue;
            }
            let path = format!("\"src/model/runtime/{name}\"");
            assert!(build.contains(&path), "build.rs does not digest {path}");
        }
        assert_eq!(env!("INFERD_IMPORT_DIGEST").len(), 16);
        // And the patch series of our patched dependencies (patches/): a patched tract may import
        // differently from the published version the key's engine names.
        assert!(build.contains("fn patch_series()"));
    }

    #[test]
    fn the_entry_digest_covers_the_names_beside_the_archive() {
        let outputs = ["probabilities".to_owned()];
        let base = entry_digest(b"tar", &outputs, &[]);
        assert_ne!(
            base,
            entry_digest(b"tar", &["probabilitiez".to_owned()], &[])
        );
        assert_ne!(
            base,
            entry_digest(b"tar", &outputs, &["a repair".to_owned()])
        );
        assert_ne!(base, entry_digest(b"taR", &outputs, &[]));
        // Length prefixes: moving bytes between parts changes the digest.
        assert_ne!(
            entry_digest(b"ab", &["c".to_owned()], &[]),
            entry_digest(b"a", &["bc".to_owned()], &[])
        );
    }

    #[test]
    fn a_missing_entry_is_a_counted_miss_and_a_stray_file_an_invalid_entry() {
        let dir = std::env::temp_dir().join(format!("inferd-cache-unit-{}", std::process::id()));
        let cache = ModelCache::open(&dir).unwrap();
        let key = Key::new(b"nothing", None);
        assert!(matches!(cache.lookup(&key, "m", 1), (Lookup::Miss, None)));
        std::fs::create_dir_all(dir.join(key.as_str())).unwrap();
        std::fs::write(dir.join(key.as_str()).join(INDEX), b"[]").unwrap();
        assert!(matches!(
            cache.lookup(&key, "m", 1),
            (Lookup::Invalid, None)
        ));
        assert!(
            !dir.join(key.as_str()).exists(),
            "the invalid entry is deleted"
        );
        let counts = cache.counts();
        assert_eq!(counts.lookups, [("hit", 0), ("miss", 1), ("invalid", 1)]);
        assert_eq!(
            counts.writes,
            [("written", 0), ("failed", 0), ("unsupported", 0)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
