//! API keys: random tokens shown once, stored only as their sha256, each with one role.
//!
//! `read` may read jobs, results and models; `submit` may also submit slides; `admin` may
//! also cancel and delete jobs. Keys are 32 random bytes, so a plain sha256 (not a slow
//! password hash) is enough to make a stolen database useless for authenticating.

use rand::RngCore;
use sha2::{Digest, Sha256};

use axum::http::{HeaderMap, header};

use super::error::ApiError;
use super::state::AppState;
use crate::serve::jobs::store::{KeyRole, Store, StoreError};

/// Prefix that makes keys recognisable in configs and secret scanners.
pub const KEY_PREFIX: &str = "sg_";

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key with `role`, stores its hash and returns the key (shown once).
pub fn create_key(store: &Store, name: &str, role: KeyRole) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    store.add_key(&hash_key(&key), name, role)?;
    Ok(key)
}

/// Whether a key with role `have` may do what needs `need`.
pub fn allows(have: KeyRole, need: KeyRole) -> bool {
    have >= need
}

/// `slidegrade keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (shown once; only its hash is stored).
    Create {
        /// Who or what uses the key, e.g. `lis`.
        #[arg(long)]
        name: String,
        /// read, submit or admin.
        #[arg(long)]
        role: String,
    },
    /// List keys (names and roles, never the keys).
    List,
    /// Revoke every key with this name.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

/// Runs `slidegrade keys …` against the server's store.
pub fn run_cli(
    store: &crate::serve::jobs::store::StoreLocation,
    command: KeysCommand,
) -> anyhow::Result<()> {
    let store = Store::open_at(store)?;
    match command {
        KeysCommand::Create { name, role } => {
            let role = crate::serve::jobs::store::KeyRole::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("--role must be read, submit or admin, not `{role}`")
            })?;
            println!("{}", create_key(&store, &name, role)?);
        }
        KeysCommand::List => {
            for (name, role, created) in store.list_keys()? {
                println!("{name}\t{}\tcreated {created}", role.as_str());
            }
        }
        KeysCommand::Revoke { name } => {
            let n = store.revoke_key(&name)?;
            println!("revoked {n} key(s) named {name}");
        }
    }
    Ok(())
}

/// Checks the bearer key against the store.
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: KeyRole,
    action: &'static str,
) -> Result<(), ApiError> {
    if !state.api.require_auth {
        return Ok(());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthenticated)?;
    let key = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthenticated)?;
    let (_, role) = state
        .jobs
        .store
        .key_role(&hash_key(key))?
        .ok_or(ApiError::InvalidKey)?;
    if allows(role, need) {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            have: role.as_str(),
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(allows(KeyRole::Admin, KeyRole::Submit));
        assert!(allows(KeyRole::Submit, KeyRole::Read));
        assert!(!allows(KeyRole::Read, KeyRole::Submit));
        assert!(!allows(KeyRole::Submit, KeyRole::Admin));
    }

    #[test]
    fn keys_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let key = create_key(&store, "lis", KeyRole::Submit).unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == 3 + 64);
        assert_eq!(
            store.key_role(&hash_key(&key)).unwrap(),
            Some(("lis".into(), KeyRole::Submit))
        );
        assert_eq!(
            store.key_role(&key).unwrap(),
            None,
            "the raw key is not stored"
        );
    }
}
