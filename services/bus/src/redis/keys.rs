//! Redis key layout.
//!
//! Every key starts with a Redis Cluster hash tag naming the deployment prefix and the
//! partition, so the state of key K, the stream partition of K, its dead letters and its
//! idempotency keys share one slot and a Lua script may touch them together:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{<prefix>:p<n>}:s:<stream>` | stream | entries of partition n |
//! | `{<prefix>:p<n>}:trim:<stream>` | string | newest entry id retention removed |
//! | `{<prefix>:p<n>}:dlq:<stream>:<group>` | stream | dead letters of the group |
//! | `{<prefix>:p<n>}:err:<stream>:<group>` | hash | last error per pending entry id |
//! | `{<prefix>:p<n>}:dlqn:<stream>:<group>` | string | dead-lettered total |
//! | `{<prefix>:p<n>}:st:<namespace>:<key>` | hash | state: `_v` version, `f:<field>` values, `_h` the current kept version |
//! | `{<prefix>:p<n>}:sti:<namespace>` | zset | index of the listed state keys (score 0, by lex) |
//! | `{<prefix>:p<n>}:hv:<namespace>:<key>` | string | superseded kept versions (see `WRITE_STATES`) |
//! | `{<prefix>:p<n>}:h:<namespace>:<key>` | zset | kept versions in the earlier layout, moved on the next write |
//! | `{<prefix>:p<n>}:idem:<scope>:<key>` | string | `p<owner>` in progress (a short lease), `d<outcome>` done |
//! | `{<prefix>:t:<queue>}` | zset | timers, score = due ms |
//! | `{<prefix>:l:<stream>:<group>}:m` | zset | consumers of the group, score = expiry ms |
//! | `{<prefix>:l:<stream>:<group>}:o` | hash | partition → `owner\|expiry ms` (leases) |

use crate::partition::partition_of;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    partitions: u32,
}

impl Keys {
    pub(crate) fn new(prefix: &str, partitions: u32) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            partitions,
        }
    }

    pub(crate) fn partition_of(&self, key: &str) -> u32 {
        partition_of(key, self.partitions)
    }

    /// The hash tag every key of partition `p` starts with: it decides the partition's
    /// Redis Cluster slot.
    pub(crate) fn partition_tag(&self, p: u32) -> String {
        self.tag(p)
    }

    fn tag(&self, p: u32) -> String {
        format!("{{{}:p{p}}}", self.prefix)
    }

    pub(crate) fn stream(&self, stream: &str, p: u32) -> String {
        format!("{}:s:{stream}", self.tag(p))
    }

    pub(crate) fn trim_marker(&self, stream: &str, p: u32) -> String {
        format!("{}:trim:{stream}", self.tag(p))
    }

    pub(crate) fn stream_keys(&self, stream: &str) -> Vec<String> {
        (0..self.partitions)
            .map(|p| self.stream(stream, p))
            .collect()
    }

    pub(crate) fn dead_letters(&self, stream: &str, group: &str, p: u32) -> String {
        format!("{}:dlq:{stream}:{group}", self.tag(p))
    }

    pub(crate) fn errors(&self, stream: &str, group: &str, p: u32) -> String {
        format!("{}:err:{stream}:{group}", self.tag(p))
    }

    pub(crate) fn dead_total(&self, stream: &str, group: &str, p: u32) -> String {
        format!("{}:dlqn:{stream}:{group}", self.tag(p))
    }

    pub(crate) fn state(&self, ns: &str, key: &str) -> String {
        format!("{}:st:{ns}:{key}", self.tag(self.partition_of(key)))
    }

    pub(crate) fn state_index(&self, ns: &str, p: u32) -> String {
        format!("{}:sti:{ns}", self.tag(p))
    }

    /// The superseded kept versions of state `ns`/`key` (same slot as the state hash).
    pub(crate) fn history(&self, ns: &str, key: &str) -> String {
        format!("{}:hv:{ns}:{key}", self.tag(self.partition_of(key)))
    }

    /// The kept versions of state `ns`/`key` in the earlier layout (a sorted set), moved
    /// into [`Keys::history`] by the key's next kept write.
    pub(crate) fn legacy_history(&self, ns: &str, key: &str) -> String {
        format!("{}:h:{ns}:{key}", self.tag(self.partition_of(key)))
    }

    pub(crate) fn idempotency(&self, scope: &str, key: &str) -> String {
        format!("{}:idem:{scope}:{key}", self.tag(self.partition_of(key)))
    }

    /// The group's members and partition leases, in one slot so one script updates both.
    pub(crate) fn lease_members(&self, stream: &str, group: &str) -> String {
        format!("{{{}:l:{stream}:{group}}}:m", self.prefix)
    }

    pub(crate) fn lease_owners(&self, stream: &str, group: &str) -> String {
        format!("{{{}:l:{stream}:{group}}}:o", self.prefix)
    }

    pub(crate) fn timers(&self, queue: &str) -> String {
        format!("{{{}:t:{queue}}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_stream_of_a_key_share_a_hash_tag() {
        let keys = Keys::new("prod", 16);
        let p = keys.partition_of("SKU-1");
        assert_eq!(p, 12);
        assert_eq!(keys.stream("rates", p), "{prod:p12}:s:rates");
        assert_eq!(keys.state("sku", "SKU-1"), "{prod:p12}:st:sku:SKU-1");
        assert_eq!(
            keys.idempotency("erp", "SKU-1"),
            "{prod:p12}:idem:erp:SKU-1"
        );
        assert_eq!(keys.timers("expiry"), "{prod:t:expiry}");
    }
}
