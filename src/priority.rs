//! Thread priorities: model loading below serving, and, where configured, inference below network
//! I/O.
//!
//! On a gateway with two cores an I/O thread shares a CPU with an inference worker. At one priority,
//! admitting a request or refusing it `OVERLOADED` may wait until the kernel's scheduler takes the
//! CPU from a worker in the middle of a model run: milliseconds under overload. `worker_nice` runs
//! the inference threads (the scheduler's workers and the models' intra-op pools) that many steps
//! below the process ([`spawn_inference`]), so that the I/O threads preempt them when a frame
//! arrives. It is off (0) by default: measured pinned on one CPU (doc/BENCHMARKS.md, "Overload"),
//! nice 5 cut refusal p99 by a third but cost 12–20 % of saturation throughput, the price of
//! preempting a model run for every frame; once connections read and wrote several frames per
//! system call, the refusals gained nothing more and the cost stayed. The opposite trade is
//! I/O threads at `SCHED_BATCH` ([`io_policy`]; `io_preempt`, by default while every model runs
//! briefly), which never preempt a model run. Model loads and swaps run at `SCHED_IDLE` ([`background`]).
//!
//! Linux threads inherit their creator's scheduling policy and nice value, and an unprivileged
//! thread can neither leave `SCHED_IDLE` nor lower its nice value again. A model's intra-op pool is
//! built while the model loads, which after a swap happens on the `SCHED_IDLE` watch thread: started
//! from there, the pool's threads would run that model's inference at idle priority, behind any
//! other work on the machine. So inference threads are started by a spawner thread that keeps the
//! process's priority, started with [`init`] before any thread lowers its own.

use std::io;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;

/// Nice steps inference threads run below the process, unless configured (`worker_nice`).
pub const DEFAULT_WORKER_NICE: i32 = 0;

/// The highest (least favoured) nice value Linux knows.
const LOWEST: i32 = 19;

type Task = Box<dyn FnOnce() + Send>;

/// One thread for the spawner to start, and where to say how it went.
struct Spawn {
    name: String,
    task: Task,
    started: mpsc::SyncSender<io::Result<JoinHandle<()>>>,
}

/// The spawner's mailbox; `None` when its thread could not be started (threads are then started
/// by their requester, as without [`init`]).
static SPAWNER: OnceLock<Option<mpsc::SyncSender<Spawn>>> = OnceLock::new();

/// Starts the spawner thread, at the calling thread's priority. Call it from a thread that has not
/// lowered its priority (`main`), before the model watch thread starts; later calls do nothing.
pub fn init() {
    SPAWNER.get_or_init(|| {
        // Bounded: a requester waits for its thread to start anyway.
        let (tx, rx) = mpsc::sync_channel::<Spawn>(1);
        let spawned = std::thread::Builder::new()
            .name("inferd-spawner".into())
            .spawn(move || {
                for s in rx {
                    let handle = std::thread::Builder::new().name(s.name).spawn(s.task);
                    // The requester may have given up; the thread runs regardless.
                    let _ = s.started.send(handle);
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::warn!("cannot start the thread spawner ({e}); inference threads started while loading a model inherit the loader's idle priority");
                None
            }
        }
    });
}

/// Starts an inference thread named `name` that lowers itself `nice` steps below the process
/// (clamped to 0..=19 in all) and runs `task`: through the spawner when [`init`] has run, so that
/// it does not inherit a loader's `SCHED_IDLE`, else from the calling thread.
///
/// # Errors
/// If the thread cannot be started.
pub fn spawn_inference(
    name: String,
    nice: i32,
    task: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let task: Task = Box::new(move || {
        lower(nice);
        task();
    });
    let direct = |name: String, task: Task| std::thread::Builder::new().name(name).spawn(task);
    let Some(Some(spawner)) = SPAWNER.get() else {
        return direct(name, task);
    };
    let (started, handle) = mpsc::sync_channel(1);
    let request = Spawn {
        name,
        task,
        started,
    };
    match spawner.send(request) {
        Ok(()) => handle.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the thread spawner stopped before starting the thread",
            ))
        }),
        // The spawner has gone (it never stops while the process runs): start the thread here.
        Err(mpsc::SendError(request)) => direct(request.name, request.task),
    }
}

/// Lowers the calling thread `steps` nice steps below its current value (never raises it, which
/// would need privilege). Where a system-call filter refuses, the thread keeps its priority.
fn lower(steps: i32) {
    if steps <= 0 {
        return;
    }
    let me = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
    let target = current.saturating_add(steps).min(LOWEST);
    if target <= current {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(Some(me), target) {
        log::debug!(
            "cannot lower an inference thread to nice {target} ({e}); it keeps nice {current}"
        );
    }
}

/// Moves the calling thread to `SCHED_IDLE`, or to nice 19 where that is refused. Both need no
/// privilege; where a system-call filter refuses both, the thread keeps normal priority.
///
/// Why `SCHED_IDLE` rather than only nice 19: at nice 19 a loader still runs out its slice when an
/// inference worker wakes (~1.5 ms on two CPUs with EEVDF), which showed as a 3.7–4× p99 while a
/// swap was loading. The kernel preempts a `SCHED_IDLE` thread as soon as any normal thread wakes
/// on its CPU, and still gives it a small share of a saturated CPU, so a load finishes under full
/// load, only later.
pub fn background() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        Ok(()) => return,
        Err(e) => log::debug!("cannot move the model loader to SCHED_IDLE ({e:?}); trying nice 19"),
    }
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), LOWEST) {
        log::debug!("cannot lower the model loader's priority ({e}); loading at normal priority");
    }
}

/// Moves the calling I/O thread to `SCHED_BATCH` (`batch`) or back to the normal policy, at its
/// current nice value (`io_preempt`, `server::io_policy`). Needs no privilege: only the policy
/// changes, never the nice value. Where it is refused the thread keeps its policy, and says so.
///
/// Why: the kernel lets a woken thread of the normal policy preempt the running one, and an I/O
/// thread wakes once per frame and once per answer. On a CPU it shares with a worker that makes
/// two context switches per request, and the I/O thread handles one frame or answer per turn. A
/// `SCHED_BATCH` thread never preempts on waking; it runs when the worker blocks, yields
/// (`worker_yield_us`) or ends its slice, and then reads every frame and writes every answer that is
/// ready. Pinned to one CPU (doc/BENCHMARKS.md, "inferd vs its in-process ceiling"): silero-vad's
/// saturation 0.48–0.50× → 0.65–0.74× of its ceiling, p99 at half load unchanged; but a frame
/// that arrives during a long model run waits for its end, so models that run longer than the
/// worker's yield interval make refusals slow (doc/BENCHMARKS.md, "Overload"). On a CPU of its
/// own the policy changes nothing.
pub fn io_policy(batch: bool) {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let policy = ThreadSchedulePolicy::Normal(if batch {
        NormalThreadSchedulePolicy::Batch
    } else {
        NormalThreadSchedulePolicy::Other
    });
    let name = if batch {
        "SCHED_BATCH"
    } else {
        "the normal policy"
    };
    let me = rustix::thread::gettid();
    let nice = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
    // thread-priority sets a normal policy's nice value with it, from its own 0..=99 scale: take
    // the value it maps to this thread's nice, so that only the policy changes (an unprivileged
    // thread could not raise its priority back).
    let keep = (0..=99u8)
        .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
        .map(ThreadPriority::Crossplatform)
        .find(|p| p.to_posix(policy).is_ok_and(|n| n == nice));
    let Some(keep) = keep else {
        log::warn!("no priority of {name} keeps nice {nice}; the I/O thread keeps its policy");
        return;
    };
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), keep, policy) {
        log::warn!("cannot move an I/O thread to {name} ({e:?}); it keeps its policy");
    }
}

/// How the kernel schedules thread `tid` of process `pid`, read from `/proc` (for tests and
/// diagnostics): its policy number (0 normal, 3 batch, 5 idle) and nice value.
///
/// # Errors
/// If `/proc/PID/task/TID/stat` cannot be read or parsed.
pub fn thread_scheduling(pid: u32, tid: u32) -> io::Result<(u32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| io::Error::other(format!("unexpected /proc stat line: {stat}")))
}

/// Policy (field 41) and nice (field 19) from a `stat` line; the name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(u32, i32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let nice = fields.get(19 - 3)?.parse().ok()?;
    let policy = fields.get(41 - 3)?.parse().ok()?;
    Some((policy, nice))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_tid() -> u32 {
        rustix::thread::gettid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs()
    }

    #[test]
    fn an_io_thread_moves_to_batch_and_back_keeping_its_nice_value() {
        // At the process's nice, and at one a unit's `Nice=` or an operator may have set.
        for lowered in [0, 3] {
            let (before, after) = std::thread::spawn(move || {
                lower(lowered);
                let before = thread_scheduling(std::process::id(), my_tid()).unwrap();
                io_policy(true);
                let batch = thread_scheduling(std::process::id(), my_tid()).unwrap();
                io_policy(false);
                let back = thread_scheduling(std::process::id(), my_tid()).unwrap();
                (before, (batch, back))
            })
            .join()
            .unwrap();
            let (batch, back) = after;
            assert_eq!(
                batch,
                (3, before.1),
                "SCHED_BATCH (3), same nice; was {before:?}"
            );
            assert_eq!(back, (0, before.1), "the normal policy again, same nice");
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A real line of a thread named "a) b" at nice 5, SCHED_IDLE.
        let line = "4242 (a) b) S 1 4242 4242 0 -1 4194624 100 0 0 0 1 2 0 0 25 5 3 0 \
                    123 4096 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 5 0 0 0";
        assert_eq!(parse_stat(line), Some((5, 5)));
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn inference_threads_run_below_the_caller_even_from_an_idle_thread() {
        init();
        // An idle-priority thread (the watch thread after a swap) asks for an inference thread.
        let seen = std::thread::spawn(|| {
            background();
            let (tx, rx) = mpsc::channel();
            let t = spawn_inference("prio-test".into(), 3, move || {
                let _ = tx.send(thread_scheduling(std::process::id(), my_tid()));
            })
            .unwrap();
            t.join().unwrap();
            rx.recv().unwrap().unwrap()
        })
        .join()
        .unwrap();
        let (_, spawner_nice) = thread_scheduling(std::process::id(), my_tid()).unwrap();
        assert_eq!(
            seen.0, 0,
            "policy must be SCHED_OTHER, not inherited SCHED_IDLE"
        );
        assert_eq!(seen.1, (spawner_nice + 3).min(LOWEST));
    }
}
