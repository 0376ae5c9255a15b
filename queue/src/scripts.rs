//! The Lua scripts, one per state change, each prefixed with `lua/common.lua`.

use redis::Script;
use std::sync::LazyLock;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../lua/common.lua"),
                "\n",
                include_str!(concat!("../lua/", $file))
            ))
        });
    };
}

script!(ENQUEUE, "enqueue.lua");
script!(CLAIM, "claim.lua");
script!(COMPLETE, "complete.lua");
script!(RENEW, "renew.lua");
script!(PROGRESS, "progress.lua");
script!(REAP, "reap.lua");
script!(CANCEL, "cancel.lua");
script!(RERUN, "rerun.lua");
script!(STATS, "stats.lua");
