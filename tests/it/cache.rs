//! The prepared-model cache: a miss leaves an entry to write (the server's model watch thread writes
//! it; these tests call `write_cache_entries` in its place), a restart hits it and serves the same
//! outputs, a changed ONNX file or manifest is never served from its old entry, a damaged entry is
//! refused and replaced, and a cache folder that cannot be used never stops the models from serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use inferd::model::repository::Settings;
use inferd::model::Repository;
use inferd::tensor::HostTensor;

use crate::harness::{
    copy_dir, eventually, http_get, models_dir, repo_root, scratch, Scratch, TestServer,
};

fn temp(tag: &str) -> Scratch {
    scratch(&format!("cache-{tag}"))
}

fn open(repo: &Path, cache: &Path) -> Repository {
    Repository::open(
        repo,
        Settings {
            cache_dir: Some(cache.to_owned()),
            ..Settings::default()
        },
    )
    .unwrap()
}

/// Opens and writes the entries the loads left, as the watch thread of a server would.
fn open_and_write(repo: &Path, cache: &Path) -> Repository {
    let models = open(repo, cache);
    models.write_cache_entries();
    models
}

fn counts(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().copied().collect()
}

/// Each version's cache outcome, as `inferd models` shows it.
fn outcomes(models: &Repository) -> BTreeMap<String, Option<&'static str>> {
    models
        .status()
        .into_iter()
        .map(|s| (s.name, s.cache))
        .collect()
}

/// Each model's outputs on its warm-up inputs (its shipped sample).
fn outputs(models: &Repository) -> BTreeMap<String, Vec<HostTensor>> {
    models
        .snapshot()
        .all()
        .map(|m| {
            let out = m.runtime.run(m.warmup_inputs.clone()).unwrap();
            (m.name.clone(), out)
        })
        .collect()
}

/// The entry folders (hidden temporary folders excluded).
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    found.sort();
    found
}

/// A repository holding shipped digits-mlp as `digits/1`, its files writable.
fn digits_repo(tag: &str) -> Scratch {
    let repo = temp(tag);
    copy_dir(
        &repo_root().join("models/digits-mlp/1"),
        &repo.join("digits/1"),
    );
    repo
}

#[test]
fn a_restart_reads_the_prepared_models_and_serves_identical_outputs() {
    let cache = temp("restart");
    let cold = open(models_dir(), &cache);
    let first = outcomes(&cold);
    assert!(first.values().all(|o| *o == Some("miss")), "{first:?}");
    assert!(
        entries(&cache).is_empty(),
        "written after the load, not during it"
    );
    // The float models (and the masked-sum fixture) are written; tract 0.23.9 has no NNEF form for
    // QuantizeLinear to i8.
    assert_eq!(cold.write_cache_entries(), 4);
    assert_eq!(
        counts(&cold.cache_counts().writes),
        counts(&[("written", 4), ("failed", 0), ("unsupported", 2)])
    );
    let uncached = outputs(&cold);
    drop(cold);
    let written = entries(&cache);
    assert_eq!(written.len(), 4, "{written:?}");
    for entry in &written {
        assert!(entry.join("model.nnef.tar").is_file(), "{entry:?}");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.join("entry.json")).unwrap()).unwrap();
        assert_eq!(index["engine"], "tract-0.23.9");
        assert_eq!(index["version"], 1);
    }

    let warm = open(models_dir(), &cache);
    let second = outcomes(&warm);
    for name in ["digits-mlp", "ppocr-cls", "silero-vad", "masked-sum"] {
        assert_eq!(second[name], Some("hit"), "{second:?}");
    }
    assert_eq!(
        counts(&warm.cache_counts().lookups),
        counts(&[("hit", 4), ("miss", 2), ("invalid", 0)])
    );
    assert_eq!(
        warm.write_cache_entries(),
        0,
        "a hit leaves nothing to write"
    );
    // Bit for bit: the cached graph is the imported one, optimised the same way.
    assert_eq!(outputs(&warm), uncached);
    assert_eq!(entries(&cache), written, "a hit writes nothing");
}

#[test]
fn a_changed_model_file_or_manifest_is_not_served_from_the_old_entry() {
    let repo = digits_repo("changed");
    let cache = temp("changed-cache");
    let onnx = repo.join("digits/1/model.onnx");
    let before = outcomes(&open_and_write(&repo, &cache));
    assert_eq!(before["digits"], Some("miss"));
    let old = entries(&cache);
    assert_eq!(old.len(), 1);

    // The same graph in different bytes: an unknown field (number 100, varint 1) appended to the
    // ModelProto, which protobuf readers skip. Only the digest can tell.
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes.extend_from_slice(&[0xa0, 0x06, 0x01]);
    std::fs::write(&onnx, &bytes).unwrap();
    let changed = open_and_write(&repo, &cache);
    assert_eq!(outcomes(&changed)["digits"], Some("miss"));
    let new = entries(&cache);
    assert_eq!(new.len(), 1, "the replaced entry is deleted: {new:?}");
    assert_ne!(new, old);
    drop(changed);
    assert_eq!(outcomes(&open(&repo, &cache))["digits"], Some("hit"));

    // A manifest that declares the inputs differently changes the graph, so the key too.
    let manifest = repo.join("digits/1/model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(r#"shape = ["N", 64]"#), "{text}");
    std::fs::write(&manifest, text.replace(r#"["N", 64]"#, r#"["batch", 64]"#)).unwrap();
    let redeclared = open_and_write(&repo, &cache);
    assert_eq!(outcomes(&redeclared)["digits"], Some("miss"));
    let input = &redeclared.snapshot().get("digits", None).unwrap().runtime;
    assert_eq!(input.inputs()[0].to_string(), "X: f32[batch, 64]");
    assert_eq!(entries(&cache).len(), 1);
}

#[test]
fn a_damaged_entry_is_refused_and_rewritten() {
    let repo = digits_repo("damaged");
    let cache = temp("damaged-cache");
    let reference = outputs(&open_and_write(&repo, &cache));
    let entry = entries(&cache).pop().unwrap();

    // One flipped byte inside the archive: caught by the digest entry.json records.
    let archive = entry.join("model.nnef.tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, &bytes).unwrap();
    let models = open_and_write(&repo, &cache);
    assert_eq!(outcomes(&models)["digits"], Some("invalid"));
    assert_eq!(outputs(&models), reference);
    drop(models);
    assert_eq!(
        outcomes(&open(&repo, &cache))["digits"],
        Some("hit"),
        "rewritten"
    );

    // An index that is not JSON.
    std::fs::write(entry.join("entry.json"), b"{ not json").unwrap();
    let models = open(&repo, &cache);
    assert_eq!(outcomes(&models)["digits"], Some("invalid"));
    assert_eq!(outputs(&models), reference);
}

#[test]
fn a_cache_folder_that_cannot_be_created_leaves_the_models_serving() {
    let repo = digits_repo("unusable");
    let scratch = temp("unusable-cache");
    let blocker = scratch.join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let models = open(&repo, &blocker.join("cache"));
    assert_eq!(outcomes(&models)["digits"], None, "served without a cache");
    assert!(models.cache_counts().lookups.is_empty());
    assert_eq!(models.write_cache_entries(), 0);
    assert_eq!(outputs(&models).len(), 1);
}

#[test]
fn the_server_writes_the_entries_and_counts_them_in_its_metrics() {
    let repo = digits_repo("metrics");
    let cache = temp("metrics-cache");
    let models = std::sync::Arc::new(open(&repo, &cache));
    let server = TestServer::serving(models, |_| {});
    // The model watch thread writes the entry once the server runs.
    let metrics_addr = server.metrics_addr.unwrap();
    eventually("the cache entry is written and counted", || {
        http_get(metrics_addr, "/metrics")
            .1
            .contains("inferd_model_cache_writes_total{result=\"written\"} 1")
    });
    assert_eq!(entries(&cache).len(), 1);
    let (status, metrics) = http_get(metrics_addr, "/metrics");
    assert_eq!(status, 200);
    for series in [
        "inferd_model_cache_lookups_total{outcome=\"miss\"} 1",
        "inferd_model_cache_lookups_total{outcome=\"hit\"} 0",
        "inferd_model_cache_writes_total{result=\"written\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    let (_, listing) = http_get(server.metrics_addr.unwrap(), "/models");
    assert!(listing.contains("\"cache\":\"miss\""), "{listing}");
    server.stop();
}

#[test]
fn a_version_that_does_not_serve_leaves_no_entry() {
    let repo = digits_repo("unserved");
    let cache = temp("unserved-cache");
    let models = open(&repo, &cache);
    assert_eq!(models.write_cache_entries(), 1, "version 1's entry");
    // Version 2 imports and warms on the loader thread, then fails on the inference workers: it
    // never serves, so it is never cached. (Its bytes differ from version 1's, so would its key.)
    models.warm_on_workers(std::sync::Arc::new(|_| {
        Err("refused by the test".to_owned())
    }));
    copy_dir(&repo.join("digits/1"), &repo.join("digits/2"));
    let onnx = repo.join("digits/2/model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes.extend_from_slice(&[0xa0, 0x06, 0x01]);
    std::fs::write(&onnx, &bytes).unwrap();
    let changes = models.rescan().unwrap();
    assert_eq!(changes.failed.len(), 1, "{changes:?}");
    assert_eq!(models.write_cache_entries(), 0);
    assert_eq!(entries(&cache).len(), 1, "only version 1's");
}
