//! Kernel state that faults share while any of them needs it: a program
//! attached to a hook, a cgroup's attachments, an interface's programs.
//! The first fault that needs one makes it; the others get the same
//! `Arc`; the last one to drop it detaches it. The table holds weak
//! references only, so it never keeps anything alive by itself.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Weak},
};

/// Shared values by key, alive while a holder of their `Arc` is.
#[derive(Debug)]
pub struct SharedByKey<K, V> {
    by_key: HashMap<K, Weak<V>>,
}

impl<K, V> Default for SharedByKey<K, V> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V> SharedByKey<K, V> {
    /// The value for `key`, made by `make` if nobody holds one; on error
    /// nothing is recorded.
    pub fn get_or_try_make<E>(
        &mut self,
        key: K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        self.by_key.retain(|_, v| v.strong_count() > 0);
        if let Some(v) = self.by_key.get(&key).and_then(Weak::upgrade) {
            return Ok(v);
        }
        let v = Arc::new(make()?);
        self.by_key.insert(key, Arc::downgrade(&v));
        Ok(v)
    }

    /// Whether someone holds the value for `key`.
    pub fn is_held(&self, key: &K) -> bool {
        self.by_key.get(key).is_some_and(|v| v.strong_count() > 0)
    }

    /// The values someone holds.
    pub fn held(&self) -> impl Iterator<Item = Arc<V>> + '_ {
        self.by_key.values().filter_map(Weak::upgrade)
    }

    /// Whether nobody holds any value.
    pub fn is_empty(&self) -> bool {
        self.by_key.values().all(|v| v.strong_count() == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lives_while_held_and_is_made_again_after() {
        let mut s: SharedByKey<u32, String> = SharedByKey::default();
        let mut made = 0;
        let a = s
            .get_or_try_make(1, || {
                made += 1;
                Ok::<_, ()>("one".to_string())
            })
            .unwrap();
        let b = s.get_or_try_make(1, || Err(())).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(s.is_held(&1) && !s.is_empty());
        drop((a, b));
        assert!(!s.is_held(&1) && s.is_empty());
        assert!(s.get_or_try_make(1, || Err("failed")).is_err());
        assert!(!s.is_held(&1));
        assert_eq!(made, 1);
    }
}
