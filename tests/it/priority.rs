//! Thread priorities of a running daemon, read from `/proc`: inference threads (workers and a
//! model's intra-op pool) `--worker-nice` steps below the I/O thread, at the normal policy even when
//! the pool was built by the idle-priority model watch thread during a swap; the watch thread idle;
//! the I/O threads at `SCHED_BATCH` with `--io-preempt false`, and with `auto` while no served
//! model runs an operator longer than the worker's time slice.

use std::collections::BTreeMap;
use std::time::Duration;

use inferd::priority::thread_scheduling;

use inferd::client::{BlockingClient, ClientOptions};

use crate::harness::{
    copy_dir, eventually, listening_addr, models_dir, ppocr_input, scratch, serve_command,
    spawn_logged, wait_for, KillOnDrop, Scratch,
};

/// Policy numbers of `sched_setscheduler(2)`.
const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// Every thread of `pid`, by name (`comm`, at most 15 bytes): policy and nice of each.
fn threads_of(pid: u32) -> BTreeMap<String, Vec<(u32, i32)>> {
    let mut threads: BTreeMap<String, Vec<(u32, i32)>> = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path();
        let Ok(tid) = path.file_name().unwrap().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread may end between the listing and the reads.
        let (Ok(comm), Ok(scheduling)) = (
            std::fs::read_to_string(path.join("comm")),
            thread_scheduling(pid, tid),
        ) else {
            continue;
        };
        threads
            .entry(comm.trim().to_owned())
            .or_default()
            .push(scheduling);
    }
    threads
}

/// A scratch repository holding digits-mlp v1 alone (removed when dropped), and a `serve` command
/// on it.
fn digits_only(tag: &str) -> (Scratch, std::process::Command) {
    let root = scratch(tag);
    copy_dir(
        &models_dir().join("digits-mlp/1"),
        &root.join("digits-mlp/1"),
    );
    let command = serve_command(&root);
    (root, command)
}

/// Policy and nice of the one thread called `name`; panics unless there is exactly one.
fn only_thread(threads: &BTreeMap<String, Vec<(u32, i32)>>, name: &str) -> (u32, i32) {
    match threads.get(name).map(Vec::as_slice) {
        Some([only]) => *only,
        other => panic!("expected one thread {name:?}, got {other:?} in {threads:?}"),
    }
}

#[test]
fn inference_threads_run_below_io_even_when_a_swap_builds_them() {
    let (root, mut command) = digits_only("priority");
    let pools = cfg!(feature = "intra-op-threads");
    if pools {
        std::fs::write(root.join("digits-mlp/serving.toml"), "threads = 2\n").unwrap();
    }
    command
        .args([
            "--workers",
            "2",
            "--worker-nice",
            "4",
            "--model-poll-ms",
            "100",
            "--io-preempt",
            "true",
        ])
        .args(["--model-cache", "off"]);
    let (child, lines) = spawn_logged(command);
    let mut child = KillOnDrop(child);
    let limit = Duration::from_secs(60);
    wait_for(&lines, "listening on ", limit);
    // Version 2 is loaded, with its own intra-op pool, by the watch thread.
    copy_dir(
        &models_dir().join("digits-mlp/1"),
        &root.join("digits-mlp/2"),
    );
    wait_for(&lines, "loaded digits-mlp v2", limit);
    let threads = threads_of(child.0.id());
    let _ = child.0.kill();
    let _ = child.0.wait();

    let one = |name: &str| only_thread(&threads, name);
    // With one I/O thread, the main thread runs the executor.
    let (io_policy, io_nice) = one("inferd");
    assert_eq!(io_policy, SCHED_OTHER);
    let inference = (SCHED_OTHER, (io_nice + 4).min(19));
    assert_eq!(one("inferd-worker-0"), inference);
    assert_eq!(one("inferd-worker-1"), inference);
    // The watch thread loads at idle priority: what the pool would inherit without the spawner.
    assert_eq!(one("inferd-models").0, SCHED_IDLE);
    if !pools {
        return;
    }
    // Names are cut to 15 bytes: "inferd-intra-op-N" reads "inferd-intra-op". Version 2's pool is
    // among them (version 1's may still be draining).
    let pools = threads.get("inferd-intra-op").cloned().unwrap_or_default();
    assert!(pools.len() >= 2, "no intra-op pool threads in {threads:?}");
    assert!(
        pools.iter().all(|&t| t == inference),
        "intra-op threads {pools:?}, expected all {inference:?}"
    );
}

const SCHED_BATCH: u32 = 3;

/// Polls `pid`'s threads until `names` are all at `policy` (up to 5 s); the last reading. Each name
/// must be one thread's: a thread just spawned carries its parent's name (`inferd`) until it has run
/// far enough to set its own, which on a busy machine can be after the daemon logged that it listens.
fn until_policy(pid: u32, names: &[&str], policy: u32) -> BTreeMap<String, Vec<(u32, i32)>> {
    let at = |threads: &BTreeMap<String, Vec<(u32, i32)>>, name: &str| match threads
        .get(name)
        .map(Vec::as_slice)
    {
        Some([only]) => Some(only.0),
        _ => None,
    };
    let mut threads = threads_of(pid);
    for _ in 0..500 {
        if names.iter().all(|n| at(&threads, n) == Some(policy)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        threads = threads_of(pid);
    }
    threads
}

#[test]
fn auto_batches_io_while_no_operator_outlasts_the_slice_and_preempts_once_one_does() {
    let io = ["inferd", "inferd-io-1"];
    let limit = Duration::from_secs(60);
    let (root, mut command) = digits_only("io-auto");
    // auto is the default; the poll lets the second model arrive while it runs.
    command.args(["--io-threads", "2", "--model-poll-ms", "100"]);
    command.args(["--model-cache", "off"]);
    let (child, lines) = spawn_logged(command);
    let mut child = KillOnDrop(child);
    let addr = listening_addr(&wait_for(&lines, "listening on ", limit));
    // digits-mlp runs in microseconds, within the worker's 500 µs slice.
    let fast = until_policy(child.0.id(), &io, SCHED_BATCH);
    // ppocr-cls runs for milliseconds, but in operators of a fraction of one, and the worker yields
    // between two once its slice is used up: a frame waits for the slice, not for a whole run. Two
    // of auto's decisions later the I/O threads still do not preempt. (A few requests first: the
    // longest operator is a moving estimate, timed on the worker's CPU in the model's first
    // executions and then in a sample of them, and the warm-up runs', with caches shared with
    // other tests, may have run slow.)
    copy_dir(&models_dir().join("ppocr-cls/1"), &root.join("ppocr-cls/1"));
    wait_for(&lines, "loaded ppocr-cls v1", limit);
    let client = BlockingClient::connect(addr, ClientOptions::default()).unwrap();
    let ppocr = || client.infer("ppocr-cls", None, &[ppocr_input()], None);
    // Logged as loaded once it is warm on the workers, just before it is swapped in.
    eventually("ppocr-cls served", || ppocr().is_ok());
    for _ in 0..30 {
        ppocr().unwrap();
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let long_runs = until_policy(child.0.id(), &io, SCHED_BATCH);
    let _ = child.0.kill();
    let _ = child.0.wait();

    // The same two models with a 50 µs slice: ppocr-cls's operators outlast it, so frames would
    // wait for them; auto's first decision preempts, and names the model.
    let (root, mut command) = digits_only("io-auto-slice");
    copy_dir(&models_dir().join("ppocr-cls/1"), &root.join("ppocr-cls/1"));
    command.args(["--io-threads", "2", "--worker-yield-us", "50"]);
    command.args(["--model-cache", "off"]);
    let (child, lines) = spawn_logged(command);
    let mut child = KillOnDrop(child);
    let decided = wait_for(&lines, "I/O threads now at the normal policy", limit);
    assert!(decided.contains("ppocr-cls"), "{decided}");
    let slow = until_policy(child.0.id(), &io, SCHED_OTHER);
    let _ = child.0.kill();
    let _ = child.0.wait();

    let nice = only_thread(&fast, "inferd-worker-0").1;
    for name in io {
        assert_eq!(
            only_thread(&fast, name),
            (SCHED_BATCH, nice),
            "{name}, fast models only"
        );
        assert_eq!(
            only_thread(&long_runs, name),
            (SCHED_BATCH, nice),
            "{name}, ppocr-cls served with a 500 µs slice"
        );
        assert_eq!(
            only_thread(&slow, name),
            (SCHED_OTHER, nice),
            "{name}, ppocr-cls served with a 50 µs slice"
        );
    }
    assert_eq!(only_thread(&slow, "inferd-worker-0"), (SCHED_OTHER, nice));
}

#[test]
fn io_threads_run_at_batch_policy_when_they_must_not_preempt_inference() {
    let (_root, mut command) = digits_only("io-batch");
    command.args(["--io-threads", "2", "--io-preempt", "false"]);
    command.args(["--model-cache", "off"]);
    let (child, lines) = spawn_logged(command);
    let mut child = KillOnDrop(child);
    wait_for(&lines, "listening on ", Duration::from_secs(60));
    // "listening on" is logged just before the I/O threads start (the main one among them).
    let threads = until_policy(child.0.id(), &["inferd", "inferd-io-1"], SCHED_BATCH);
    let _ = child.0.kill();
    let _ = child.0.wait();

    let one = |name: &str| only_thread(&threads, name);
    // Both I/O threads (the main one and the second), at the process's nice; inference unchanged.
    let (worker_policy, nice) = one("inferd-worker-0");
    assert_eq!(worker_policy, SCHED_OTHER);
    assert_eq!(one("inferd"), (SCHED_BATCH, nice));
    assert_eq!(one("inferd-io-1"), (SCHED_BATCH, nice));
}
