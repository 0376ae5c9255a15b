//! The Lua scripts, one per state change, each prefixed with `lua/common.lua`; claim and
//! complete are functions (`*_fn.lua`) so that `COMPLETE_CLAIM` runs both in one call.

use redis::Script;
use std::sync::LazyLock;

macro_rules! script {
    ($name:ident, $($file:literal),+) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../lua/common.lua"),
                $("\n", include_str!(concat!("../lua/", $file))),+
            ))
        });
    };
}

script!(ENQUEUE, "enqueue.lua");
script!(CLAIM, "claim_fn.lua", "claim.lua");
script!(COMPLETE, "complete_fn.lua", "complete.lua");
// Claim-on-complete: both functions, one round trip (see complete_claim.lua).
script!(
    COMPLETE_CLAIM,
    "complete_fn.lua",
    "claim_fn.lua",
    "complete_claim.lua"
);
script!(RENEW, "renew.lua");
script!(PROGRESS, "progress.lua");
script!(REAP, "reap.lua");
script!(CANCEL, "cancel.lua");
script!(RERUN, "rerun.lua");
script!(STATS, "stats.lua");
