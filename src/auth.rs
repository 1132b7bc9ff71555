//! API keys: random tokens shown once, stored only as their sha256, each with one role.
//!
//! `read` may read jobs, results and models; `submit` may also submit slides; `admin` may
//! also cancel and delete jobs. Keys are 32 random bytes, so a plain sha256 (not a slow
//! password hash) is enough to make a stolen database useless for authenticating.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::jobs::store::{Role, Store, StoreError};

/// Prefix that makes keys recognisable in configs and secret scanners.
pub const KEY_PREFIX: &str = "sg_";

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key with `role`, stores its hash and returns the key (shown once).
pub fn create_key(store: &Store, name: &str, role: Role) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    store.add_key(&hash_key(&key), name, role)?;
    Ok(key)
}

/// Whether a key with role `have` may do what needs `need`.
pub fn allows(have: Role, need: Role) -> bool {
    let rank = |r: Role| match r {
        Role::Read => 0,
        Role::Submit => 1,
        Role::Admin => 2,
    };
    rank(have) >= rank(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(allows(Role::Admin, Role::Submit));
        assert!(allows(Role::Submit, Role::Read));
        assert!(!allows(Role::Read, Role::Submit));
        assert!(!allows(Role::Submit, Role::Admin));
    }

    #[test]
    fn keys_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let key = create_key(&store, "lis", Role::Submit).unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == 3 + 64);
        assert_eq!(
            store.key_role(&hash_key(&key)).unwrap(),
            Some(("lis".into(), Role::Submit))
        );
        assert_eq!(
            store.key_role(&key).unwrap(),
            None,
            "the raw key is not stored"
        );
    }
}
