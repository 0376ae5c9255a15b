//! What the scheduler and the binary need from Redis, as queue operations: the scheduler's
//! leader lock, its per-schedule last run and per-tick claim, the pool's pub/sub subscription
//! and the eviction policy check. Only this crate builds Redis keys or runs scripts; the keys
//! live under the queue's prefix (and its hash tag) like every other.

use crate::{Queue, Result};
use std::time::Duration;

/// Take the lock if free, renew it if `ARGV[1]` holds it.
const LOCK_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"#;

/// Delete the lock only if `ARGV[1]` holds it.
const UNLOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// How long a claimed tick is remembered (its dedup key).
const TICK_TTL_SECS: u64 = 7 * 86400;

impl Queue {
    fn sched_key(&self, rest: &str) -> String {
        format!("{}sched:{rest}", self.prefix())
    }

    /// Take or renew the scheduler's leader lock for `owner`, `ttl` long; whether `owner`
    /// holds it now.
    pub async fn hold_leader(&self, owner: &str, ttl: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LOCK_SCRIPT)
            .arg(1)
            .arg(self.sched_key("leader"))
            .arg(owner)
            .arg(ttl.as_millis() as u64);
        let got: i64 = self.raw(&cmd).await?;
        Ok(got == 1)
    }

    /// Give up the leader lock if `owner` holds it.
    pub async fn release_leader(&self, owner: &str) -> Result<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(UNLOCK_SCRIPT)
            .arg(1)
            .arg(self.sched_key("leader"))
            .arg(owner);
        let _: i64 = self.raw(&cmd).await?;
        Ok(())
    }

    /// When `schedule` last fired (unix seconds), if ever.
    pub async fn schedule_last(&self, schedule: &str) -> Result<Option<i64>> {
        self.raw(redis::cmd("GET").arg(self.sched_key(&format!("last:{schedule}"))))
            .await
    }

    /// Record that `schedule` last fired at `ts`; with `only_if_unset`, only when it has no
    /// last run yet (a schedule seen for the first time).
    pub async fn set_schedule_last(
        &self,
        schedule: &str,
        ts: i64,
        only_if_unset: bool,
    ) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.sched_key(&format!("last:{schedule}"))).arg(ts);
        if only_if_unset {
            cmd.arg("NX");
        }
        let _: Option<String> = self.raw(&cmd).await?;
        Ok(())
    }

    /// Claim the tick `ts` of `schedule` for `owner`: true for exactly one caller across every
    /// process (remembered a week).
    pub async fn claim_tick(&self, schedule: &str, ts: i64, owner: &str) -> Result<bool> {
        let fresh: Option<String> = self
            .raw(
                redis::cmd("SET")
                    .arg(self.sched_key(&format!("tick:{schedule}:{ts}")))
                    .arg(owner)
                    .arg("NX")
                    .arg("EX")
                    .arg(TICK_TTL_SECS),
            )
            .await?;
        Ok(fresh.is_some())
    }

    /// Forget a claimed tick, so the next evaluation tries it again (its enqueue failed).
    pub async fn release_tick(&self, schedule: &str, ts: i64) -> Result<()> {
        let _: i64 = self
            .raw(redis::cmd("DEL").arg(self.sched_key(&format!("tick:{schedule}:{ts}"))))
            .await?;
        Ok(())
    }

    /// A pub/sub connection subscribed to the wake-up and cancel channels (the pool's
    /// listener; messages name the channel, see [`Queue::wake_channel`] and
    /// [`Queue::cancel_channel`]). On a Redis Cluster it is on the first seed node that
    /// answers: every node hears every `PUBLISH`.
    pub async fn subscribe_wake_and_cancel(&self) -> Result<redis::aio::PubSub> {
        let mut ps = self.redis().pubsub().await?;
        ps.subscribe(self.wake_channel()).await?;
        ps.subscribe(self.cancel_channel()).await?;
        Ok(ps)
    }

    /// Redis's `maxmemory-policy`; `None` where `CONFIG` is not allowed (managed Redis).
    pub async fn maxmemory_policy(&self) -> Option<String> {
        let v: Vec<String> = self
            .raw(redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await
            .ok()?;
        v.get(1).cloned()
    }
}
