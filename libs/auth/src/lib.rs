//! Who is calling, and for which tenants.
//!
//! Two modes. With API keys ([`keys`]), every OTLP and query request carries
//! `Authorization: Bearer <key>` (gRPC metadata `authorization`); the key decides the tenants it
//! may write or read, and `X-Scope-OrgID` may only narrow that choice (a key allowed several
//! tenants reads `a|b` as Grafana sends it). Without keys, the tenant is whatever
//! `X-Scope-OrgID` says: the mode for a single team, or behind a gateway that authenticates.
//! Both give the same answer type, the tenants a request acts for, from one place.

pub mod cluster;
pub mod http;
pub mod keys;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use spindle_types::TenantId;

pub use keys::{hash_key, new_key, KeyTable};

/// Most tenants any request may name (`a|b|...`), whatever the limits allow: bounds the work
/// of reading the header. The configurable limit is `max_tenants_per_query` (spindle-limits).
pub const MAX_TENANTS_PER_REQUEST: usize = 1024;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Send spans (OTLP).
    Write,
    /// Query (Tempo API, SQL, generated metrics).
    Read,
    /// Cluster administration (`/admin`).
    Admin,
}

impl Access {
    fn verb(self) -> &'static str {
        match self {
            Access::Write => "write",
            Access::Read => "read",
            Access::Admin => "administer the cluster",
        }
    }
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials: HTTP 401 / gRPC UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not allow this: HTTP 403 / gRPC PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
    /// A malformed tenant header: HTTP 400 / gRPC INVALID_ARGUMENT.
    #[error("{0}")]
    BadRequest(String),
    /// The keys file cannot be read or parsed.
    #[error("API keys file {path}: {reason}")]
    KeysFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl AuthError {
    /// The gRPC status for this refusal.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AuthError::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            AuthError::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
            AuthError::BadRequest(m) => tonic::Status::invalid_argument(m.clone()),
            AuthError::KeysFile { .. } => tonic::Status::internal(self.to_string()),
        }
    }
}

enum Mode {
    TrustHeader,
    Keys { table: RwLock<Arc<KeyTable>>, path: std::path::PathBuf },
}

/// Decides the tenants of each request.
pub struct Auth {
    mode: Mode,
}

/// The tenants named by an `X-Scope-OrgID` value (`a|b` for several), `None` when absent.
pub fn parse_tenant_header(value: Option<&str>) -> Result<Option<Vec<TenantId>>, AuthError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    let mut out: Vec<TenantId> = Vec::new();
    for t in v.split('|') {
        let t = TenantId::new(t.trim()).map_err(|e| AuthError::BadRequest(format!("X-Scope-OrgID: {e}")))?;
        if !out.contains(&t) {
            out.push(t);
        }
        if out.len() > MAX_TENANTS_PER_REQUEST {
            return Err(AuthError::BadRequest(format!(
                "X-Scope-OrgID names more than {MAX_TENANTS_PER_REQUEST} tenants"
            )));
        }
    }
    Ok(Some(out))
}

impl Auth {
    /// Trusts `X-Scope-OrgID` (no keys): any caller may act for any tenant.
    pub fn trust_header() -> Arc<Self> {
        Arc::new(Self { mode: Mode::TrustHeader })
    }

    /// Requires API keys from the YAML file at `path` (see [`keys`]).
    pub fn with_keys_file(path: &Path) -> Result<Arc<Self>, AuthError> {
        let table = KeyTable::load(path)?;
        tracing::info!(keys = table.len(), file = %path.display(), "API keys loaded");
        Ok(Arc::new(Self { mode: Mode::Keys { table: RwLock::new(Arc::new(table)), path: path.to_path_buf() } }))
    }

    /// Whether requests need an API key.
    pub fn requires_keys(&self) -> bool {
        matches!(self.mode, Mode::Keys { .. })
    }

    /// The tenants a request acts for. `authorization` is the `Authorization` header,
    /// `org_id` the `X-Scope-OrgID` header. Writes name one tenant; reads may name several;
    /// admin requests act for no tenant (empty list).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        org_id: Option<&str>,
        access: Access,
    ) -> Result<Vec<TenantId>, AuthError> {
        let requested = parse_tenant_header(org_id)?;
        if access == Access::Write && requested.as_ref().is_some_and(|r| r.len() > 1) {
            return Err(AuthError::BadRequest("X-Scope-OrgID: spans are written to one tenant, not several".into()));
        }
        let table = match &self.mode {
            Mode::TrustHeader => {
                return Ok(match access {
                    Access::Admin => Vec::new(),
                    _ => requested.unwrap_or_else(|| vec![TenantId::default_tenant()]),
                })
            }
            Mode::Keys { table, .. } => table.read().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let token = bearer(authorization)?;
        let key = table.find(token).ok_or_else(|| AuthError::Unauthenticated("unknown API key".into()))?;
        if !key.access.contains(&access) {
            return Err(AuthError::Forbidden(format!("API key {:?} may not {}", key.name, access.verb())));
        }
        if access == Access::Admin {
            return Ok(Vec::new());
        }
        let tenants = match requested {
            None => vec![key.tenants[0].clone()],
            Some(requested) => {
                if let Some(t) = requested.iter().find(|t| !key.tenants.contains(t)) {
                    return Err(AuthError::Forbidden(format!("API key {:?} may not access tenant {t}", key.name)));
                }
                requested
            }
        };
        Ok(tenants)
    }

    /// Re-reads the keys file whenever it changes (checked every `every`); a file that does not
    /// parse keeps the current keys. Returns at once in header mode.
    pub async fn reload_on_change(self: Arc<Self>, every: Duration) {
        let Mode::Keys { table, path } = &self.mode else { return };
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(path);
        loop {
            tokio::time::sleep(every).await;
            let now = modified(path);
            if now == seen {
                continue;
            }
            seen = now;
            match KeyTable::load(path) {
                Ok(t) => {
                    tracing::info!(keys = t.len(), "API keys reloaded");
                    *table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
                }
                Err(e) => tracing::error!(error = %e, "API keys file not reloaded; keeping the current keys"),
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
        return Err(AuthError::Unauthenticated("missing API key: send Authorization: Bearer <key>".into()));
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Unauthenticated("Authorization must be \"Bearer <key>\"".into()));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, Arc<Auth>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let yaml = format!(
            "keys:\n  - name: a-writer\n    sha256: {}\n    tenants: [a]\n    access: [write]\n  - name: grafana\n    sha256: {}\n    tenants: [a, b]\n    access: [read]\n  - name: ops\n    sha256: {}\n    tenants: [ops]\n    access: [admin]\n",
            hash_key("key-a"),
            hash_key("key-grafana"),
            hash_key("key-ops"),
        );
        std::fs::write(&path, yaml).unwrap();
        let auth = Auth::with_keys_file(&path).unwrap();
        (dir, auth)
    }

    fn tenants(v: &[TenantId]) -> Vec<&str> {
        v.iter().map(|t| t.as_str()).collect()
    }

    #[test]
    fn the_key_decides_the_tenant() {
        let (_d, auth) = keys();
        let w = auth.authorize(Some("Bearer key-a"), None, Access::Write).unwrap();
        assert_eq!(tenants(&w), ["a"]);
        let r = auth.authorize(Some("bearer key-grafana"), Some("a|b"), Access::Read).unwrap();
        assert_eq!(tenants(&r), ["a", "b"]);
        assert!(matches!(auth.authorize(None, None, Access::Read), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(auth.authorize(Some("Bearer nope"), None, Access::Read), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(auth.authorize(Some("Basic key-a"), None, Access::Write), Err(AuthError::Unauthenticated(_))));
        // Header tricks: another tenant, a tenant list sneaking one in, several for a write.
        assert!(matches!(auth.authorize(Some("Bearer key-a"), Some("b"), Access::Write), Err(AuthError::Forbidden(_))));
        assert!(matches!(
            auth.authorize(Some("Bearer key-grafana"), Some("a|c"), Access::Read),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            auth.authorize(Some("Bearer key-a"), Some("a|a2"), Access::Write),
            Err(AuthError::BadRequest(_))
        ));
        assert!(matches!(
            auth.authorize(Some("Bearer key-a"), Some("../x"), Access::Write),
            Err(AuthError::BadRequest(_))
        ));
        // Scopes.
        assert!(matches!(auth.authorize(Some("Bearer key-a"), None, Access::Read), Err(AuthError::Forbidden(_))));
        assert!(matches!(
            auth.authorize(Some("Bearer key-grafana"), None, Access::Write),
            Err(AuthError::Forbidden(_))
        ));
        assert!(auth.authorize(Some("Bearer key-ops"), None, Access::Admin).unwrap().is_empty());
        assert!(matches!(auth.authorize(Some("Bearer key-a"), None, Access::Admin), Err(AuthError::Forbidden(_))));
    }

    #[test]
    fn header_mode_trusts_the_header() {
        let auth = Auth::trust_header();
        assert_eq!(tenants(&auth.authorize(None, None, Access::Write).unwrap()), ["single-tenant"]);
        assert_eq!(tenants(&auth.authorize(None, Some(" a | b |a"), Access::Read).unwrap()), ["a", "b"]);
        let many = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>().join("|");
        assert_eq!(auth.authorize(None, Some(&many(20)), Access::Read).map(|a| tenants(&a).len()).ok(), Some(20));
        let too_many = many(MAX_TENANTS_PER_REQUEST + 1);
        assert!(matches!(auth.authorize(None, Some(&too_many), Access::Read), Err(AuthError::BadRequest(_))));
    }
}
