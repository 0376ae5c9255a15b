//! The persistent store (DESIGN §7): accounts, packages, job history, audit log, quota usage,
//! health reports, over sqlx (SQLite by default, PostgreSQL by `DATABASE_URL`).
//!
//! **Not built yet.** Finished jobs currently live in Redis for their retention period only
//! (`queue` trims them by age and count); archiving them here comes with the store.
