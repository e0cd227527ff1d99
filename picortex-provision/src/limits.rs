//! The resource limits the gateway may ask for in `StartTurn`'s `limits` dictionary, checked
//! against the bounds in `picortex_proto::bus::limits`. Pure (no bus, no root) and apart from
//! `units`, so the fuzz target `helper_args` can compile this file on its own.

use std::collections::HashMap;

use picortex_proto::bus::limits as L;
use zbus::OwnedVariant;

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory_max: u64,
    pub tasks_max: u64,
    pub runtime_max_usec: u64,
    pub cpu_weight: u64,
    pub io_weight: u64,
    pub cpu_quota_per_sec_usec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_max: L::MEMORY_MAX_DEFAULT,
            tasks_max: L::TASKS_MAX_DEFAULT,
            runtime_max_usec: L::RUNTIME_MAX_USEC_DEFAULT,
            cpu_weight: L::CPU_WEIGHT_DEFAULT,
            io_weight: L::IO_WEIGHT_DEFAULT,
            cpu_quota_per_sec_usec: L::CPU_QUOTA_PER_SEC_USEC_DEFAULT,
        }
    }
}

impl Limits {
    /// Read the `a{sv}` the gateway sent: unknown keys, wrong types and out-of-range values are
    /// refused (a clear error beats a silently clamped limit).
    pub fn from_dict(d: &HashMap<String, OwnedVariant>) -> Result<Self, String> {
        let mut l = Self::default();
        for (k, v) in d {
            let n = u64::try_from(&**v).map_err(|_| format!("limit {k} must be a uint64 (t)"))?;
            let (slot, lo, hi) = match k.as_str() {
                L::MEMORY_MAX => (&mut l.memory_max, L::MEMORY_MAX_MIN, L::MEMORY_MAX_MAX),
                L::TASKS_MAX => (&mut l.tasks_max, L::TASKS_MAX_MIN, L::TASKS_MAX_MAX),
                L::RUNTIME_MAX_USEC => (
                    &mut l.runtime_max_usec,
                    L::RUNTIME_MAX_USEC_MIN,
                    L::RUNTIME_MAX_USEC_MAX,
                ),
                L::CPU_WEIGHT => (&mut l.cpu_weight, 1, 10000),
                L::IO_WEIGHT => (&mut l.io_weight, 1, 10000),
                L::CPU_QUOTA_PER_SEC_USEC => (
                    &mut l.cpu_quota_per_sec_usec,
                    L::CPU_QUOTA_PER_SEC_USEC_MIN,
                    L::CPU_QUOTA_PER_SEC_USEC_MAX,
                ),
                other => return Err(format!("unknown limit {other:?}")),
            };
            if !(lo..=hi).contains(&n) {
                return Err(format!("limit {k}={n} is outside {lo}..={hi}"));
            }
            *slot = n;
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_are_checked_not_clamped() {
        let mut d = HashMap::new();
        d.insert("MemoryMax".to_owned(), OwnedVariant::from(64u64 << 20));
        assert_eq!(Limits::from_dict(&d).unwrap().memory_max, 64 << 20);
        d.insert("MemoryMax".to_owned(), OwnedVariant::from(1u64));
        assert!(Limits::from_dict(&d).unwrap_err().contains("outside"));
        let mut d = HashMap::new();
        d.insert("User".to_owned(), OwnedVariant::from(1u64));
        assert!(Limits::from_dict(&d).unwrap_err().contains("unknown"));
        let mut d = HashMap::new();
        d.insert("TasksMax".to_owned(), OwnedVariant::from(5i32));
        assert!(Limits::from_dict(&d).unwrap_err().contains("uint64"));
    }
}
