//! The API keys file: who may write and read which tenants. Keys are stored as SHA-256 hashes
//! (hex), never in the clear; `spindle keygen` makes a key and its entry.
//!
//! ```yaml
//! keys:
//!   - name: checkout-service      # for logs and error messages
//!     sha256: 9f86d08...           # hex SHA-256 of the key
//!     tenants: [team-a]           # the first is the default when X-Scope-OrgID is absent
//!     access: [write]             # write, read, admin [write, read]
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use spindle_types::TenantId;

use crate::{Access, AuthError};

/// A new random API key (32 bytes from the system's secure generator, hex: 64 characters).
pub fn new_key() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| AuthError::Unauthenticated("the system's random generator failed".into()))?;
    Ok(hex::encode(bytes))
}

/// The hex SHA-256 of an API key, as the keys file stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntryFile {
    name: String,
    sha256: String,
    #[serde(default)]
    tenants: Vec<String>,
    access: Option<Vec<Access>>,
}

/// One key's permissions.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// Its name (not secret).
    pub name: String,
    /// Tenants it may act for; the first is its default.
    pub tenants: Vec<TenantId>,
    /// What it may do.
    pub access: Vec<Access>,
}

/// Every key, by the hash of the key.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], KeyEntry>,
}

impl KeyTable {
    /// Reads and checks a keys file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let err = |reason: String| AuthError::KeysFile { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeysFile = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut by_hash = HashMap::new();
        for k in file.keys {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(k.sha256.trim(), &mut hash)
                .map_err(|_| err(format!("key {:?}: sha256 must be 64 hex digits", k.name)))?;
            let access = k.access.unwrap_or_else(|| vec![Access::Write, Access::Read]);
            let tenants = k
                .tenants
                .iter()
                .map(|t| TenantId::new(t).map_err(|e| err(format!("key {:?}: {e}", k.name))))
                .collect::<Result<Vec<_>, _>>()?;
            if tenants.is_empty() && access.iter().any(|a| *a != Access::Admin) {
                return Err(err(format!("key {:?} names no tenant", k.name)));
            }
            let name = k.name.clone();
            if by_hash.insert(hash, KeyEntry { name: k.name, tenants, access }).is_some() {
                return Err(err(format!("key {name:?}: the same key is listed twice")));
            }
        }
        Ok(Self { by_hash })
    }

    /// The entry of `key`, if it is listed.
    pub fn find(&self, key: &str) -> Option<&KeyEntry> {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let hash: [u8; 32] = digest.as_ref().try_into().ok()?;
        self.by_hash.get(&hash)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}
