//! Accounts in memory, for `--store memory`: they last as long as the process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Access, Account, AccountStore};
use crate::store::StoreError;

/// Accounts by lower-case name, and private rooms.
#[derive(Default)]
pub struct MemoryAccounts {
    accounts: Mutex<BTreeMap<String, Account>>,
    private: Mutex<HashMap<String, PrivateRoom>>,
}

struct PrivateRoom {
    owner: String,
    members: HashSet<String>,
}

#[async_trait]
impl AccountStore for MemoryAccounts {
    async fn find(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        Ok(accounts.get(&name.to_ascii_lowercase()).cloned())
    }

    async fn register(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let mut accounts = self.accounts.lock().expect("accounts lock");
        let key = name.to_ascii_lowercase();
        if accounts.contains_key(&key) {
            return Ok(false);
        }
        let account = Account {
            name: name.into(),
            hash: hash.to_string(),
        };
        accounts.insert(key, account);
        Ok(true)
    }

    async fn set_password(
        &self,
        name: &str,
        expected: Option<&str>,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let mut accounts = self.accounts.lock().expect("accounts lock");
        match accounts.get_mut(&name.to_ascii_lowercase()) {
            Some(account) if expected.is_none_or(|e| e == account.hash) => {
                account.hash = hash.to_string();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unregister(&self, name: &str) -> Result<bool, StoreError> {
        let key = name.to_ascii_lowercase();
        let mut private = self.private.lock().expect("private rooms lock");
        for room in private.values_mut() {
            room.members.remove(&key);
            if room.owner == key {
                // The oldest other member would be fairest; any member keeps it usable.
                room.owner = room.members.iter().min().cloned().unwrap_or_default();
            }
        }
        let mut accounts = self.accounts.lock().expect("accounts lock");
        Ok(accounts.remove(&key).is_some())
    }

    async fn list(&self) -> Result<Vec<Arc<str>>, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        let mut names: Vec<_> = accounts.values().map(|a| a.name.clone()).collect();
        names.sort();
        Ok(names)
    }

    async fn registered_among(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let accounts = self.accounts.lock().expect("accounts lock");
        Ok(keys
            .iter()
            .filter_map(|k| accounts.get(k).map(|a| (k.clone(), a.hash.clone())))
            .collect())
    }

    async fn hidden_among(
        &self,
        rooms: &[Arc<str>],
        member: Option<&str>,
    ) -> Result<HashSet<String>, StoreError> {
        let private = self.private.lock().expect("private rooms lock");
        Ok(rooms
            .iter()
            .filter(|room| {
                private
                    .get(&***room)
                    .is_some_and(|p| member.is_none_or(|m| !p.members.contains(m)))
            })
            .map(|room| room.to_string())
            .collect())
    }

    async fn room_access(&self, room: &str, member: Option<&str>) -> Result<Access, StoreError> {
        let private = self.private.lock().expect("private rooms lock");
        Ok(match (private.get(room), member) {
            (None, _) => Access::Public,
            (Some(p), Some(m)) if p.owner == m => Access::Owner,
            (Some(p), Some(m)) if p.members.contains(m) => Access::Member,
            (Some(_), _) => Access::Outsider,
        })
    }

    async fn make_private(&self, room: &str, owner: &str) -> Result<bool, StoreError> {
        let mut private = self.private.lock().expect("private rooms lock");
        if private.contains_key(room) {
            return Ok(false);
        }
        let made = PrivateRoom {
            owner: owner.to_string(),
            members: HashSet::from([owner.to_string()]),
        };
        private.insert(room.to_string(), made);
        Ok(true)
    }

    async fn make_public(&self, room: &str, owner: &str) -> Result<bool, StoreError> {
        let mut private = self.private.lock().expect("private rooms lock");
        if private.get(room).is_some_and(|p| p.owner == owner) {
            private.remove(room);
            return Ok(true);
        }
        Ok(false)
    }

    async fn invite(&self, room: &str, member: &str) -> Result<bool, StoreError> {
        let mut private = self.private.lock().expect("private rooms lock");
        Ok(private
            .get_mut(room)
            .is_some_and(|p| p.members.insert(member.to_string())))
    }

    async fn uninvite(&self, room: &str, member: &str) -> Result<bool, StoreError> {
        let mut private = self.private.lock().expect("private rooms lock");
        Ok(private
            .get_mut(room)
            .is_some_and(|p| p.owner != member && p.members.remove(member)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_match_without_regard_to_case() {
        let accounts = MemoryAccounts::default();
        assert!(accounts.register("Alice", "h1").await.unwrap());
        assert!(!accounts.register("alice", "h2").await.unwrap());
        let found = accounts.find("ALICE").await.unwrap().unwrap();
        assert_eq!(&*found.name, "Alice");
        assert!(!accounts
            .set_password("alice", Some("other"), "h3")
            .await
            .unwrap());
        assert!(accounts
            .set_password("alice", Some("h1"), "h3")
            .await
            .unwrap());
        assert_eq!(accounts.find("alice").await.unwrap().unwrap().hash, "h3");
        assert_eq!(accounts.list().await.unwrap(), vec![Arc::from("Alice")]);
        assert!(accounts.unregister("aLiCe").await.unwrap());
        assert!(accounts.find("alice").await.unwrap().is_none());
    }
}
