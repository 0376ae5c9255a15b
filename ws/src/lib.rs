//! WebSocket fan-out of job events (DESIGN §4).
//!
//! # Why this shape
//! Every job event (status, progress, stage, log, complete) is already appended by `queue` to one
//! capped Redis stream whose ids are strictly increasing. So the server side is small:
//!
//! - one [`Hub`] per process follows that stream with a single blocking `XREAD` connection
//!   ([`queue::EventReader`]) and publishes each event, serialised once, on a tokio `broadcast`
//!   channel: a thousand sockets cost one Redis connection, not a thousand;
//! - each socket ([`serve_socket`]) filters the broadcast by its [`Scope`] (one job, or all) and
//!   its [`Viewer`] (tenant rules), and sends a `snapshot` first, or with `?since=<seq>` replays
//!   the stream from Redis (`XRANGE`) and then continues live, skipping what it already sent, so
//!   nothing is missed or duplicated;
//! - a socket that cannot keep up is never waited for: the broadcast overwrites its oldest
//!   messages, its receiver reports `Lagged`, and it is sent a fresh snapshot instead;
//! - pings keep idle sockets alive (and detect dead peers); [`Hub::try_acquire`] enforces
//!   `ws.max_connections` before the upgrade so the refusal is a clean HTTP answer.
//!
//! Authentication and the HTTP error table live in `api`, which owns the routes; this crate takes
//! an already-authenticated [`Viewer`]. It depends on `queue` only (DESIGN §1).
//!
//! # The client
//! [`client`] is the other end: the one HTTP client and WebSocket connect that the CLI, the load
//! drivers and the tests use (`http://` only, bearer token, timeouts, idle connections reaped,
//! `?since=` resumption, a refused upgrade as the API's `{error, message}` and Retry-After). It
//! lives here, next to the wire format it reads, rather than in `api`: the drivers may not
//! depend on the server crates (DESIGN §1), and this crate's only workspace dependency is
//! `queue`.
//!
//! # Messages
//! `{"type": "snapshot"|"status"|"progress"|"stage"|"log"|"complete", "seq", "job_id", ...}`:
//! the event's data fields are flattened into the message. A one-job `snapshot` carries the job
//! under `"job"`; the all-jobs stream's `snapshot` carries `"jobs"` (newest 100 visible) and has no
//! `job_id`. `seq` of a snapshot is the newest stream id at the time it was taken: reconnecting
//! with `?since=` that value continues exactly after it.
//!
//! `status` messages carry `status` (`queued`, `running`, `retrying`, `cancelling`) and, for
//! `running`, the `attempt`. An attempt's `running` comes with its first progress write, or
//! once it has run 100 ms (`queue::progress::ANNOUNCE_AFTER`): an attempt over sooner goes from
//! `queued` straight to `complete` (its job's `status` and `started_at` say it ran).

pub mod client;
mod hub;
mod message;
pub mod metrics;
mod socket;
mod viewer;

pub use hub::{ConnGuard, Hub, HubConfig, JobSource, Refused, WireEvent};
pub use message::{event_message, parse_seq, snapshot_all_message, snapshot_message, Seq};
pub use socket::{serve_socket, Scope};
pub use viewer::{Role, Viewer};
