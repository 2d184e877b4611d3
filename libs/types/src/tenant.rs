//! Tenant ids. They name object-store folders, so only a safe alphabet is accepted.

use std::fmt;

/// The tenant used when a request names none (as in Tempo).
pub const DEFAULT_TENANT: &str = "single-tenant";

/// Longest accepted tenant id.
pub const MAX_TENANT_LEN: usize = 150;

/// A tenant id that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id {id:?}: use 1-{MAX_TENANT_LEN} characters of A-Z a-z 0-9 _ - .")]
pub struct InvalidTenant {
    /// The id given (cut to one character over the limit).
    pub id: String,
}

/// A validated tenant id: 1-150 characters of `A-Z a-z 0-9 _ - .`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id.
    pub fn new(id: &str) -> Result<Self, InvalidTenant> {
        let ok_chars = id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if id.is_empty() || id.len() > MAX_TENANT_LEN || !ok_chars || id == "." || id == ".." {
            return Err(InvalidTenant { id: id.chars().take(MAX_TENANT_LEN + 1).collect() });
        }
        Ok(Self(id.to_string()))
    }

    /// The default tenant.
    pub fn default_tenant() -> Self {
        Self(DEFAULT_TENANT.to_string())
    }

    /// The tenant named by an `X-Scope-OrgID` value: the default tenant when absent or blank.
    pub fn from_header(value: Option<&str>) -> Result<Self, InvalidTenant> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::default_tenant()),
            Some(v) => Self::new(v),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(TenantId::new("single-tenant").is_ok());
        assert!(TenantId::new("team_a.prod-1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(151)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(TenantId::from_header(Some(" ")).unwrap(), TenantId::default_tenant());
    }
}
