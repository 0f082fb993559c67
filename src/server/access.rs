//! Who may call what: identities (from client certificates) mapped to the models they may use.
//!
//! The policy file is TOML:
//! ```toml
//! [anonymous]                 # connections without a client certificate (plain TCP, TLS without mTLS)
//! models = ["*"]
//! [identity."device-1"]       # a certificate's first DNS/URI subject alternative name, else its CN
//! models = ["digits-mlp", "silero-vad"]
//! admin = false               # admin operations (Reload); see `may_admin`
//! ```
//! Without a policy file every connection may use every model. With one, an identity that is not
//! listed may use nothing. Refusals are answered `NOT_AUTHORIZED`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use inferd_proto::ErrorCode;
use serde::Deserialize;

use super::Ctx;
use crate::error::RequestError;

/// What one identity may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Model names, or `"*"` for all.
    #[serde(default)]
    pub models: Vec<String>,
    /// May use admin operations.
    #[serde(default)]
    pub admin: bool,
}

impl Grant {
    fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// The access policy in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    identities: HashMap<String, Grant>,
    anonymous: Grant,
    open: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    anonymous: Grant,
    #[serde(default)]
    identity: HashMap<String, Grant>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy::open()
    }
}

impl AccessPolicy {
    /// Everyone may use every model (no policy file).
    pub fn open() -> AccessPolicy {
        AccessPolicy {
            identities: HashMap::new(),
            anonymous: Grant::default(),
            open: true,
        }
    }

    /// Reads a policy file.
    ///
    /// # Errors
    /// A message naming the file and the problem.
    pub fn load(path: &Path) -> Result<AccessPolicy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AccessPolicy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses policy text.
    ///
    /// # Errors
    /// TOML errors and unknown keys.
    pub fn parse(text: &str) -> Result<AccessPolicy, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        Ok(AccessPolicy {
            identities: file.identity,
            anonymous: file.anonymous,
            open: false,
        })
    }

    /// Whether `identity` (None: no client certificate) may use admin operations by grant. Without a
    /// policy file nobody is granted them (the loopback rule in the connection still applies).
    pub fn may_admin(&self, identity: Option<&str>) -> bool {
        if self.open {
            return false;
        }
        match identity {
            Some(id) => self.identities.get(id).is_some_and(|g| g.admin),
            None => self.anonymous.admin,
        }
    }

    /// Whether `identity` (None: no client certificate) may use `model`.
    pub fn may_use(&self, identity: Option<&str>, model: &str) -> bool {
        if self.open {
            return true;
        }
        match identity {
            Some(id) => self.identities.get(id).is_some_and(|g| g.allows(model)),
            None => self.anonymous.allows(model),
        }
    }
}

/// Who is on the other end: for logs and access checks.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The client certificate's identity, if any.
    pub identity: Option<&'a str>,
}

impl Who<'_> {
    /// Whether this client may use `model`; a refusal is counted.
    ///
    /// # Errors
    /// `NOT_AUTHORIZED`.
    pub fn may_use(&self, ctx: &Ctx, model: &str) -> Result<(), RequestError> {
        if ctx.access().may_use(self.identity, model) {
            return Ok(());
        }
        ctx.refusals.not_authorized();
        let who = self.identity.unwrap_or("an anonymous client");
        Err(RequestError::new(
            ErrorCode::NOT_AUTHORIZED,
            format!("{who} may not use model {model:?}"),
        ))
    }
    /// Admin operations: an identity granted `admin`, or (if configured) a loopback peer without one.
    /// # Errors
    /// `NOT_AUTHORIZED`.
    pub fn may_admin(&self, ctx: &Ctx) -> Result<(), RequestError> {
        let local =
            self.identity.is_none() && ctx.config.admin_loopback && self.peer.ip().is_loopback();
        if local || ctx.access().may_admin(self.identity) {
            return Ok(());
        }
        ctx.refusals.not_authorized();
        let who = self.identity.unwrap_or("an anonymous remote client");
        Err(RequestError::new(
            ErrorCode::NOT_AUTHORIZED,
            format!("{who} may not use admin operations"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants() {
        let p = AccessPolicy::parse(
            "[anonymous]\nmodels = ['public']\n[identity.\"device-1\"]\nmodels = ['a', 'b']\n[identity.ops]\nmodels = ['*']\nadmin = true\n",
        )
        .unwrap();
        assert!(p.may_use(Some("device-1"), "a"));
        assert!(!p.may_use(Some("device-1"), "c"));
        assert!(p.may_use(Some("ops"), "anything"));
        assert!(
            !p.may_use(Some("stranger"), "a"),
            "unlisted identities may use nothing"
        );
        assert!(p.may_use(None, "public"));
        assert!(!p.may_use(None, "a"));
        assert!(AccessPolicy::open().may_use(None, "x"));
        assert!(p.may_admin(Some("ops")));
        assert!(!p.may_admin(Some("device-1")));
        assert!(!p.may_admin(None));
        assert!(
            !AccessPolicy::open().may_admin(Some("ops")),
            "admin needs an explicit grant"
        );
        assert!(AccessPolicy::parse("[identty]").is_err());
    }
}
