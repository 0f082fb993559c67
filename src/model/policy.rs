//! Which versions of a model are served: the daemon-wide `--version-policy` or a model's own
//! `<name>/serving.toml`.
//!
//! `latest:N` serves the N highest versions (the default is `latest:1`, as in TF Serving and Triton:
//! dropping in version 2 replaces version 1), `all` serves every version, and a list such as `[1, 3]`
//! serves exactly those. A request without a version gets the model's `default_version` when it is
//! served, else the highest served version.

use std::collections::BTreeSet;
use std::path::Path;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    versions: Option<RawPolicy>,
    default_version: Option<u32>,
    pinned: Option<bool>,
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
        Ok(ServingFile {
            versions,
            default_version: raw.default_version,
            pinned: raw.pinned,
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
}
