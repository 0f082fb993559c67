//! Which versions of a model are served: the daemon-wide `--version-policy` or a model's own
//! `<name>/serving.toml`.
//!
//! `latest:N` serves the N highest versions (the default is `latest:1`, as in TF Serving and Triton:
//! dropping in version 2 replaces version 1), `all` serves every version, and a list such as `[1, 3]`
//! serves exactly those. A request without a version gets the model's `default_version` when it is
//! served, else the highest served version.
//!
//! The same file holds the model's scheduling knobs ([`Scheduling`]): how many workers may run it at
//! once, how many of its requests may be queued or running, how long a partial batch may wait, its
//! default deadline, and its intra-op threads.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The per-model file, beside the version folders.
pub const FILE_NAME: &str = "serving.toml";

/// Which of the versions present are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest versions (N ≥ 1).
    Latest(u32),
    /// Every version present.
    All,
    /// Exactly these versions, when present.
    Specific(BTreeSet<u32>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl std::fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionPolicy::Latest(n) => write!(f, "latest:{n}"),
            VersionPolicy::All => f.write_str("all"),
            VersionPolicy::Specific(v) => {
                let v: Vec<String> = v.iter().map(u32::to_string).collect();
                write!(f, "[{}]", v.join(", "))
            }
        }
    }
}

impl std::str::FromStr for VersionPolicy {
    type Err = String;

    /// `all`, `latest:N`, or a comma-separated list of versions (`1,3`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "all" {
            return Ok(VersionPolicy::All);
        }
        if let Some(n) = s.strip_prefix("latest:") {
            return match n.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(VersionPolicy::Latest(n)),
                _ => Err(format!("{s:?}: latest:N needs a count of at least 1")),
            };
        }
        let versions = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|v| v.trim().parse::<u32>())
            .collect::<Result<BTreeSet<u32>, _>>()
            .map_err(|_| format!("{s:?}: expected all, latest:N or a list of versions like 1,3"))?;
        Ok(VersionPolicy::Specific(versions))
    }
}

impl VersionPolicy {
    /// The versions to serve out of those present, highest first.
    pub fn select(&self, present: &BTreeSet<u32>) -> Vec<u32> {
        let rev = present.iter().rev().copied();
        match self {
            VersionPolicy::Latest(n) => rev.take(*n as usize).collect(),
            VersionPolicy::All => rev.collect(),
            VersionPolicy::Specific(wanted) => rev.filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// A model's `serving.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingFile {
    /// Overrides the daemon-wide policy for this model.
    pub versions: Option<VersionPolicy>,
    /// The version a request without one gets, when served.
    pub default_version: Option<u32>,
    /// `false`: loaded when a request asks for it and evicted (least recently used first) when
    /// the memory budget needs room; `true` (the default): always resident.
    pub pinned: Option<bool>,
    /// How the scheduler treats the model.
    pub scheduling: Scheduling,
}

/// A model's scheduling knobs; the defaults leave it to the daemon-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduling {
    /// Most inference workers running this model at once (`None`: any free worker). Keeps a slow
    /// model from occupying every worker while fast ones wait.
    pub workers: Option<usize>,
    /// Most requests of this model (all versions) queued or running; one more is refused
    /// `OVERLOADED` with a retry-after hint (`None`: only the daemon-wide queue limit applies).
    pub max_in_flight: Option<usize>,
    /// How long a free worker may hold a partial batch open for more requests while other workers
    /// are running this model (zero, the default: never). Never past the earliest member's deadline
    /// minus the model's measured run time, and never when no other worker is busy with the model.
    pub max_delay: Duration,
    /// The deadline of this model's requests that name none, and the cap on those that do (the
    /// daemon-wide default deadline caps it in turn).
    pub deadline: Option<Duration>,
    /// Threads one execution of this model may use (tract's intra-op pool; `None`: 1, so that
    /// workers × threads does not oversubscribe the cores). Applies when a version loads.
    pub threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    versions: Option<RawPolicy>,
    default_version: Option<u32>,
    pinned: Option<bool>,
    workers: Option<u64>,
    max_in_flight: Option<u64>,
    max_delay_ms: Option<u64>,
    deadline_ms: Option<u64>,
    threads: Option<u64>,
}

/// `value` when it lies in `range`, else a message naming `key`.
fn within(
    key: &str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, String> {
    match value {
        Some(v) if !range.contains(&v) => Err(format!(
            "{key} = {v}: must be {}..={}",
            range.start(),
            range.end()
        )),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPolicy {
    Text(String),
    List(Vec<u32>),
}

impl ServingFile {
    /// Reads `model_dir/serving.toml`; the defaults when there is none.
    ///
    /// # Errors
    /// A message naming the file for an unreadable or invalid one.
    pub fn load(model_dir: &Path) -> Result<ServingFile, String> {
        let path = model_dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => ServingFile::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ServingFile::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Parses the file's text.
    ///
    /// # Errors
    /// A message naming the bad key or value.
    pub fn parse(text: &str) -> Result<ServingFile, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let versions = match raw.versions {
            None => None,
            Some(RawPolicy::Text(s)) => Some(s.parse()?),
            Some(RawPolicy::List(v)) => Some(VersionPolicy::Specific(v.into_iter().collect())),
        };
        let count = |v: Option<u64>| v.and_then(|v| usize::try_from(v).ok());
        let scheduling = Scheduling {
            workers: count(within("workers", raw.workers, 1..=1024)?),
            max_in_flight: count(within("max_in_flight", raw.max_in_flight, 1..=1_000_000)?),
            max_delay: Duration::from_millis(
                within("max_delay_ms", raw.max_delay_ms, 0..=10_000)?.unwrap_or(0),
            ),
            deadline: within("deadline_ms", raw.deadline_ms, 1..=3_600_000)?
                .map(Duration::from_millis),
            threads: count(within("threads", raw.threads, 1..=256)?),
        };
        // Refused here rather than when a version loads: the error then names serving.toml, and
        // the file is read again at every rescan (a failed load waits for the model's files).
        if let Some(n) = scheduling.threads.filter(|&n| n > 1) {
            if !cfg!(feature = "intra-op-threads") {
                return Err(format!(
                    "threads = {n}: {}",
                    super::runtime::NO_INTRA_OP_THREADS
                ));
            }
        }
        Ok(ServingFile {
            versions,
            default_version: raw.default_version,
            pinned: raw.pinned,
            scheduling,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn policies_select_highest_first() {
        let present = set(&[1, 2, 5, 7]);
        assert_eq!(VersionPolicy::Latest(1).select(&present), vec![7]);
        assert_eq!(VersionPolicy::Latest(3).select(&present), vec![7, 5, 2]);
        assert_eq!(VersionPolicy::Latest(9).select(&present), vec![7, 5, 2, 1]);
        assert_eq!(VersionPolicy::All.select(&present), vec![7, 5, 2, 1]);
        assert_eq!(
            VersionPolicy::Specific(set(&[1, 3, 5])).select(&present),
            vec![5, 1]
        );
        assert!(VersionPolicy::Latest(1).select(&set(&[])).is_empty());
    }

    #[test]
    fn parses_policies_and_rejects_nonsense() {
        assert_eq!("all".parse(), Ok(VersionPolicy::All));
        assert_eq!("latest:2".parse(), Ok(VersionPolicy::Latest(2)));
        assert_eq!("1, 3".parse(), Ok(VersionPolicy::Specific(set(&[1, 3]))));
        assert_eq!("[4]".parse(), Ok(VersionPolicy::Specific(set(&[4]))));
        assert!("latest:0".parse::<VersionPolicy>().is_err());
        assert!("newest".parse::<VersionPolicy>().is_err());
        assert_eq!(VersionPolicy::Latest(2).to_string(), "latest:2");
    }

    #[test]
    fn reads_the_serving_file() {
        let f = ServingFile::parse("versions = [1, 2]\ndefault_version = 1").unwrap();
        assert_eq!(f.versions, Some(VersionPolicy::Specific(set(&[1, 2]))));
        assert_eq!(f.default_version, Some(1));
        let f = ServingFile::parse("versions = \"latest:2\"\npinned = false").unwrap();
        assert_eq!(f.versions, Some(VersionPolicy::Latest(2)));
        assert_eq!(f.pinned, Some(false));
        assert!(ServingFile::parse("version = 'all'")
            .unwrap_err()
            .contains("version"));
    }

    #[test]
    fn threads_above_one_need_the_intra_op_threads_feature() {
        let parsed = ServingFile::parse("threads = 2");
        if cfg!(feature = "intra-op-threads") {
            assert_eq!(parsed.unwrap().scheduling.threads, Some(2));
        } else {
            assert!(parsed.unwrap_err().contains("intra-op-threads"));
        }
        assert_eq!(
            ServingFile::parse("threads = 1")
                .unwrap()
                .scheduling
                .threads,
            Some(1)
        );
    }

    #[test]
    fn reads_scheduling_knobs_and_refuses_out_of_range_ones() {
        let f = ServingFile::parse(
            "workers = 1\nmax_in_flight = 8\nmax_delay_ms = 2\ndeadline_ms = 50\nthreads = 1",
        )
        .unwrap();
        assert_eq!(
            f.scheduling,
            Scheduling {
                workers: Some(1),
                max_in_flight: Some(8),
                max_delay: Duration::from_millis(2),
                deadline: Some(Duration::from_millis(50)),
                threads: Some(1),
            }
        );
        assert_eq!(
            ServingFile::parse("").unwrap().scheduling,
            Scheduling::default()
        );
        for bad in [
            "workers = 0",
            "max_in_flight = 0",
            "max_delay_ms = 10001",
            "deadline_ms = 0",
            "threads = 0",
        ] {
            let key = bad.split(' ').next().unwrap_or_default();
            let e = ServingFile::parse(bad).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
        assert!(ServingFile::parse("workers = -1").is_err());
    }
}
