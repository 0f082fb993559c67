//! Model lifecycle: versions and policies, warm-up before serving, hot swap under load, broken
//! versions that never replace working ones, unloading, the folder watch, and `inferd models`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inferd::client::{BlockingClient, ClientOptions};
use inferd::model::repository::{Settings, VersionState};
use inferd::model::Repository;

use crate::harness::{
    copy_dir, digits_input, eventually, http_get, repo_root, scratch, TestServer,
};

/// Installs shipped digits-mlp as `<repo>/digits/<version>` the way operators should: copied beside,
/// then renamed into place in one step.
fn add_digits(repo: &Path, version: u32) {
    let staging = repo.join("digits").join(format!(".{version}-incoming"));
    copy_dir(&repo_root().join("models/digits-mlp/1"), &staging);
    std::fs::rename(&staging, repo.join("digits").join(version.to_string())).unwrap();
}

fn open(repo: &Path) -> Arc<Repository> {
    Arc::new(Repository::open(repo, Settings::default()).unwrap())
}

fn client(server: &TestServer) -> BlockingClient {
    BlockingClient::connect(server.addr, ClientOptions::default()).unwrap()
}

fn served_version(client: &BlockingClient) -> u32 {
    client
        .infer("digits", None, &[digits_input()], None)
        .unwrap()
        .version
}

#[test]
fn swaps_under_load_answer_every_request_and_free_the_old_version() {
    let repo = scratch("swap");
    add_digits(&repo, 1);
    let models = open(&repo);
    let server = TestServer::serving(Arc::clone(&models), |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(std::collections::BTreeMap::<u32, u64>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, answered, failures) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&failures),
            );
            let c = client(&server);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match c.infer("digits", None, &[digits_input()], None) {
                        Ok(out) => *answered.lock().unwrap().entry(out.version).or_default() += 1,
                        Err(e) => {
                            eprintln!("request failed during swaps: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let c = client(&server);
    let mut freed = Vec::new();
    for round in 0..6 {
        // Add version 2 (latest:1 then serves it alone), then take it away (version 1 again).
        let before = models.snapshot().get("digits", None).unwrap();
        freed.push(Arc::downgrade(&before));
        drop(before);
        if round % 2 == 0 {
            add_digits(&repo, 2);
        } else {
            std::fs::rename(repo.join("digits/2"), repo.join("digits/.2-removed")).unwrap();
            std::fs::remove_dir_all(repo.join("digits/.2-removed")).unwrap();
        }
        let changes = models.rescan().unwrap();
        let now = if round % 2 == 0 { 2 } else { 1 };
        assert_eq!(
            changes.loaded,
            vec![("digits".to_owned(), now)],
            "{changes:?}"
        );
        assert_eq!(
            changes.unloaded,
            vec![("digits".to_owned(), 3 - now)],
            "{changes:?}"
        );
        // Every request resolved after the swap gets the new version.
        assert_eq!(served_version(&c), now);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request may fail");
    let answered = answered.lock().unwrap().clone();
    eprintln!("answers by version: {answered:?}");
    assert!(
        answered.get(&1).copied().unwrap_or(0) > 0 && answered.get(&2).copied().unwrap_or(0) > 0
    );
    // Every swapped-out version is freed once its requests are answered.
    eventually("swapped-out versions freed", || {
        freed.iter().all(|w| w.strong_count() == 0)
    });
    // Version 2 exists no more; version 1 serves; both rescans agree.
    let status = models.status();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(
        (status[0].version, status[0].state, status[0].default),
        (1, VersionState::Serving, true)
    );
    server.stop();
}

#[test]
fn a_broken_version_never_replaces_a_working_one() {
    let repo = scratch("broken");
    add_digits(&repo, 1);
    let models = open(&repo);
    let server = TestServer::serving(Arc::clone(&models), |_| {});
    let c = client(&server);

    // A truncated model file.
    add_digits(&repo, 2);
    let onnx = repo.join("digits/2/model.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    std::fs::write(&onnx, &bytes[..bytes.len() / 3]).unwrap();
    let changes = models.rescan().unwrap();
    assert!(
        changes.loaded.is_empty() && changes.unloaded.is_empty(),
        "{changes:?}"
    );
    assert_eq!(changes.failed.len(), 1);
    assert_eq!(served_version(&c), 1, "version 1 keeps serving");
    let failed = models
        .status()
        .into_iter()
        .find(|s| s.version == 2)
        .unwrap();
    assert_eq!(failed.state, VersionState::Failed);
    assert!(failed.reason.contains("model.onnx"), "{}", failed.reason);
    let kept = models
        .status()
        .into_iter()
        .find(|s| s.version == 1)
        .unwrap();
    assert_eq!(kept.state, VersionState::Serving);
    assert!(kept.reason.starts_with("kept"), "{}", kept.reason);

    // Unchanged files are not retried on every rescan.
    let again = models.rescan().unwrap();
    assert!(again.failed.is_empty(), "{again:?}");
    assert_eq!(models.counters().0.get("digits"), Some(&1));

    // Inputs that do not match: another model's graph under digits' manifest.
    std::fs::copy(repo_root().join("models/ppocr-cls/1/model.onnx"), &onnx).unwrap();
    let changes = models.rescan().unwrap();
    assert_eq!(changes.failed.len(), 1, "{changes:?}");
    assert!(
        changes.failed[0].2.contains("does not describe input"),
        "{:?}",
        changes.failed
    );
    assert_eq!(served_version(&c), 1);

    // A model that loads but cannot run its warm-up sample is never served either.
    std::fs::copy(repo_root().join("models/digits-mlp/1/model.onnx"), &onnx).unwrap();
    std::fs::copy(
        repo_root().join("models/ppocr-cls/1/sample/x.npy"),
        repo.join("digits/2/sample/X.npy"),
    )
    .unwrap();
    let changes = models.rescan().unwrap();
    assert_eq!(changes.failed.len(), 1, "{changes:?}");
    assert!(
        changes.failed[0].2.contains("warm-up"),
        "{:?}",
        changes.failed
    );
    assert_eq!(served_version(&c), 1);

    // Fixed: version 2 takes over.
    std::fs::copy(
        repo_root().join("models/digits-mlp/1/sample/X.npy"),
        repo.join("digits/2/sample/X.npy"),
    )
    .unwrap();
    let changes = models.rescan().unwrap();
    assert_eq!(
        changes.loaded,
        vec![("digits".to_owned(), 2)],
        "{changes:?}"
    );
    assert_eq!(served_version(&c), 2);
    assert_eq!(models.counters().0.get("digits"), Some(&3));

    // The failures are in /metrics.
    let (_, metrics) = http_get(server.metrics_addr.unwrap(), "/metrics");
    assert!(
        metrics.contains("inferd_model_load_failures_total{model=\"digits\"} 3"),
        "{metrics}"
    );
    server.stop();
}

#[test]
fn version_policies_and_the_default_version() {
    let repo = scratch("policy");
    for v in [1, 2, 3] {
        add_digits(&repo, v);
    }
    std::fs::write(
        repo.join("digits/serving.toml"),
        "versions = \"all\"\ndefault_version = 2\n",
    )
    .unwrap();
    let models = open(&repo);
    let server = TestServer::serving(Arc::clone(&models), |_| {});
    let c = client(&server);
    let listed: Vec<u32> = c
        .list_models()
        .unwrap()
        .models
        .iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(listed, vec![1, 2, 3]);
    assert_eq!(served_version(&c), 2, "default_version");
    assert_eq!(
        c.infer("digits", Some(3), &[digits_input()], None)
            .unwrap()
            .version,
        3
    );

    std::fs::write(repo.join("digits/serving.toml"), "versions = [1]\n").unwrap();
    let changes = models.rescan().unwrap();
    assert_eq!(changes.unloaded.len(), 2, "{changes:?}");
    assert_eq!(served_version(&c), 1);
    let standby: Vec<(u32, VersionState)> = models
        .status()
        .into_iter()
        .map(|s| (s.version, s.state))
        .collect();
    assert_eq!(
        standby,
        vec![
            (1, VersionState::Serving),
            (2, VersionState::Standby),
            (3, VersionState::Standby)
        ]
    );
    let e = c
        .infer("digits", Some(3), &[digits_input()], None)
        .unwrap_err();
    assert!(e.to_string().contains("no version 3"), "{e}");

    // A bad serving.toml keeps what is served.
    std::fs::write(repo.join("digits/serving.toml"), "versions = \"newest\"\n").unwrap();
    let changes = models.rescan().unwrap();
    assert_eq!(changes.failed.len(), 1, "{changes:?}");
    assert_eq!(served_version(&c), 1);
    server.stop();
}

#[test]
fn the_folder_watch_serves_a_dropped_in_version_and_inferd_models_shows_why() {
    let repo = scratch("watch");
    add_digits(&repo, 1);
    let models = open(&repo);
    let server = TestServer::serving(Arc::clone(&models), |c| {
        c.model_poll = Some(Duration::from_millis(100));
    });
    let c = client(&server);
    assert_eq!(served_version(&c), 1);
    add_digits(&repo, 2);
    eventually("version 2 served without a signal", || {
        served_version(&c) == 2
    });

    let (status, body) = http_get(server.metrics_addr.unwrap(), "/models");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let versions = json["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{body}");
    assert_eq!(versions[0]["state"], "standby");
    assert_eq!(versions[0]["reason"], "not selected by policy latest:1");
    assert_eq!(versions[1]["state"], "serving");
    assert_eq!(versions[1]["default"], true);
    assert!(versions[1]["load_ms"].as_f64().unwrap() > 0.0);
    // digits batches (whether its single rows get a plan of their own is measured at load).
    assert!(
        versions[1]["batching"].as_str().unwrap().starts_with("yes"),
        "{body}"
    );
    assert!(versions[0]["batching"].is_null(), "{body}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args([
            "models",
            "--http",
            &server.metrics_addr.unwrap().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("digits ") && l.contains("serving"))
        .unwrap();
    assert!(line.contains(" 2 ") && line.contains(" yes "), "{text}");
    assert!(text.contains("not selected by policy latest:1"), "{text}");

    // An admin Reload asks for a rescan too: removing version 2 brings version 1 back.
    std::fs::remove_dir_all(repo.join("digits/2")).unwrap();
    c.reload().unwrap();
    eventually("version 1 served again", || served_version(&c) == 1);
    server.stop();
}

/// The loader runs at background priority so that a load never delays a waking inference worker:
/// `SCHED_IDLE` (policy 5), which the scheduler preempts as soon as a normal thread wakes.
#[test]
fn the_model_loader_thread_runs_at_idle_scheduling_policy() {
    const SCHED_IDLE: u32 = 5;
    let loader_policies = || {
        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            // A thread may end between the listing and the reads.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("stat")),
            ) else {
                continue;
            };
            if comm.trim() == "inferd-models" {
                // Fields after "pid (comm)" start at field 3; `policy` is field 41 (proc(5)).
                let rest = &stat[stat.rfind(')').unwrap() + 1..];
                policies.push(
                    rest.split_whitespace()
                        .nth(41 - 3)
                        .unwrap()
                        .parse::<u32>()
                        .unwrap(),
                );
            }
        }
        policies
    };
    let server = TestServer::start();
    // The thread sets its policy as it starts; other tests' servers run in this process too, so
    // every loader thread found must be idle.
    eventually("every loader thread at SCHED_IDLE", || {
        let policies = loader_policies();
        !policies.is_empty() && policies.iter().all(|&p| p == SCHED_IDLE)
    });
    server.stop();
}

#[test]
fn warm_up_runs_before_a_version_serves_even_without_a_sample() {
    let repo = scratch("warm");
    add_digits(&repo, 1);
    std::fs::remove_dir_all(repo.join("digits/1/sample")).unwrap();
    let models = open(&repo);
    let m = models.snapshot().get("digits", None).unwrap();
    assert!(m.load.warmup.is_some(), "generated inputs warm it up");
    let off = Repository::open(
        &repo,
        Settings {
            warmup_runs: 0,
            ..Settings::default()
        },
    )
    .unwrap();
    assert!(off
        .snapshot()
        .get("digits", None)
        .unwrap()
        .load
        .warmup
        .is_none());
}

#[test]
fn each_worker_runs_a_version_before_it_serves() {
    use inferd::model::ServedModel;
    use inferd::scheduler::Scheduler;
    let repo = scratch("workers");
    add_digits(&repo, 1);
    let models = open(&repo);
    let m = models.snapshot().get("digits", None).unwrap();
    let scheduler = Scheduler::start(3, 8, 1, 0, None).unwrap();
    // Waits for one run on each of the three workers; warm-up runs are not request executions.
    scheduler.warm(&m).unwrap();
    assert_eq!(scheduler.stats().executions, 0);
    // Warm-up inputs the model cannot take fail the version.
    let wrong = Arc::new(ServedModel {
        name: m.name.clone(),
        version: 2,
        manifest: m.manifest.clone(),
        runtime: m.runtime.clone(),
        batch: m.batch.clone(),
        load: m.load,
        loaded_at: m.loaded_at,
        last_used: std::sync::atomic::AtomicU64::new(0),
        warmup_inputs: vec![crate::harness::ppocr_input()],
        service: Default::default(),
    });
    assert!(scheduler.warm(&wrong).is_err());
    let warmer = scheduler.warmer();
    scheduler.shutdown();
    assert!(scheduler.warm(&m).unwrap_err().contains("stopping"));
    drop(scheduler);
    assert!(
        warmer.warm(&m).is_ok(),
        "nothing to warm once the workers are gone"
    );
}

#[test]
fn the_memory_budget_evicts_the_least_recently_used_and_refuses_what_cannot_fit() {
    use inferd::proto::ErrorCode;
    let repo = scratch("budget");
    add_digits(&repo, 1); // pinned (the default)
                          // Whether a batching model keeps a single-row plan (counted twice in the budget) is decided by
                          // a race at load that a busy machine can tip either way: decided here, so every copy weighs
                          // the same.
    let one_plan = |version_dir: &Path| {
        let manifest = version_dir.join("model.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("single_row_plan = false\n{text}")).unwrap();
    };
    one_plan(&repo.join("digits/1"));
    let on_demand = |name: &str, from: &str| {
        copy_dir(
            &repo_root().join("models").join(from).join("1"),
            &repo.join(name).join("1"),
        );
        std::fs::write(repo.join(name).join("serving.toml"), "pinned = false\n").unwrap();
    };
    for name in ["a", "b", "c"] {
        on_demand(name, "digits-mlp");
        one_plan(&repo.join(name).join("1"));
    }
    on_demand("big", "silero-vad");
    // Room for the pinned model and two of the small ones, not three, and not the big one.
    let weights = open(&repo)
        .snapshot()
        .get("digits", None)
        .unwrap()
        .runtime
        .weight_bytes();
    let models = Arc::new(
        Repository::open(
            &repo,
            Settings {
                memory_budget: Some(weights * 7 / 2),
                ..Settings::default()
            },
        )
        .unwrap(),
    );
    let server = TestServer::serving(Arc::clone(&models), |_| {});
    let c = client(&server);
    let ask = |name: &str| c.infer(name, None, &[digits_input()], None);
    let state = |name: &str| {
        models
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| (s.state, s.reason))
            .unwrap()
    };

    // Not resident at start: the first request says so and asks for it; it then loads.
    let e = ask("a").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_LOADED), "{e}");
    assert!(e.to_string().contains("loaded on demand"), "{e}");
    eventually("a loaded on demand", || ask("a").is_ok());
    eventually("b loaded on demand", || ask("b").is_ok());
    // a is now used more recently than b ...
    std::thread::sleep(Duration::from_millis(20));
    ask("a").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // ... so c's load evicts b.
    eventually("c loaded on demand", || ask("c").is_ok());
    assert_eq!(state("b").0, VersionState::Standby);
    assert!(state("b").1.starts_with("evicted"), "{:?}", state("b"));
    assert_eq!(state("a").0, VersionState::Serving);
    assert_eq!(ask("b").unwrap_err().code(), Some(ErrorCode::NOT_LOADED));

    // Too big even with every on-demand model evicted: refused with a clear error; the pinned
    // model and the resident ones keep serving.
    let silero = inferd::npy::read_folder(&repo_root().join("models/silero-vad/1/sample")).unwrap();
    assert_eq!(
        c.infer("big", None, &silero, None).unwrap_err().code(),
        Some(ErrorCode::NOT_LOADED)
    );
    eventually("big refused", || state("big").0 == VersionState::Failed);
    assert!(
        state("big").1.contains("does not fit the memory budget"),
        "{:?}",
        state("big")
    );
    // The state is recorded while the rescan runs, the refusal message with the snapshot it
    // publishes when it ends: wait for that, then every request for it gets the reason.
    eventually("requests told why big is refused", || {
        c.infer("big", None, &silero, None)
            .unwrap_err()
            .to_string()
            .contains("does not fit the memory budget")
    });
    let e = c.infer("big", None, &silero, None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_LOADED), "{e}");
    assert!(
        e.to_string().contains("does not fit the memory budget"),
        "{e}"
    );
    assert_eq!(served_version(&c), 1);
    assert!(ask("c").is_ok());
    let pinned: Vec<(String, bool)> = models
        .status()
        .into_iter()
        .map(|s| (s.name, s.pinned))
        .collect();
    assert!(
        pinned.contains(&("digits".to_owned(), true)) && pinned.contains(&("a".to_owned(), false))
    );
    server.stop();
}

#[test]
fn lock_memory_locks_the_loaded_models_or_refuses_to_start_saying_why() {
    use crate::harness::{serve_command, signal, spawn_logged};
    let repo = scratch("lock");
    add_digits(&repo, 1);
    let mut command = serve_command(&repo);
    command.args(["--lock-memory", "true"]);
    let (mut child, lines) = spawn_logged(command);
    // Either it locked (root, CAP_IPC_LOCK or a large RLIMIT_MEMLOCK) or it stopped with the fix.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let outcome = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).expect("a lock outcome in the log");
        if line.contains("locked") && line.contains("MiB of resident memory") {
            break Ok(line);
        }
        if line.contains("cannot lock the models into memory") {
            break Err(line);
        }
    };
    match outcome {
        Ok(line) => {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            let locked_kb: u64 = status
                .lines()
                .find(|l| l.starts_with("VmLck:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap();
            assert!(locked_kb > 1024, "{line}; VmLck {locked_kb} kB");
            // Locking happens while the repository opens, before the signal handlers exist: a TERM
            // sent now would kill the process by default action. Wait until it listens.
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let next = lines
                    .recv_timeout(left)
                    .expect("the server listens after locking");
                if next.contains("listening on") {
                    break;
                }
            }
            signal(&child, "-TERM");
            assert!(child.wait().unwrap().success());
        }
        Err(line) => {
            assert!(line.contains("LimitMEMLOCK"), "{line}");
            assert!(!child.wait().unwrap().success(), "start-up must fail");
        }
    }
}
