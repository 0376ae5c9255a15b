//! The store's one error type: callers map it to the API's table (503 / 404 / 409 / 422 / 500).

/// Everything the store can answer instead of a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (pool timeout, I/O, closed): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// No such record (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The record exists or is in a state that forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// A reseller's allowance would be exceeded; nothing was written.
    #[error("{0}")]
    AllowanceExceeded(String),
    /// Well-formed but invalid input.
    #[error("{0}")]
    Invalid(String),
    /// A bug or an unexpected database answer.
    #[error("database error: {0}")]
    Database(String),
}

/// Store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(format!("the store is unavailable: {e}"))
            }
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("already exists: {}", d.message()))
            }
            sqlx::Error::Database(d)
                if d.message().contains("database is locked")
                    || d.message().contains("the database system is") =>
            {
                StoreError::Unavailable(format!("the store is busy: {}", d.message()))
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Database(format!("a stored document does not parse: {e}"))
    }
}
