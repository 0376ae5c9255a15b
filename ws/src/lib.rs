//! WebSocket fan-out of job events (DESIGN §4).
//!
//! **Not built yet** (issue 3). The events it will stream already exist: `queue` appends every
//! progress, stage, log and completion event to a capped Redis stream (see `queue::events`).
