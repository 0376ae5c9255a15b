//! The library's error type.

use std::io;
use std::path::PathBuf;

use crate::account::AccountNameError;
use crate::protocol::{ErrorCode, WireError};

/// Everything that can go wrong in the agent library (server and client side).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: wrote {wrote:?} but read back {read:?}")]
    VerifyMismatch {
        file: PathBuf,
        wrote: String,
        read: String,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A symlink (or another unexpected kind of file) where the operation
    /// needs a real directory or file: refused, never followed.
    #[error("{0}")]
    UnsafePath(String),
    /// A host tool is missing or failed.
    #[error("{0}")]
    ToolFailed(String),
    #[error("invalid account name: {0}")]
    InvalidAccount(#[from] AccountNameError),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("cannot connect to the agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent answered with a typed error.
    #[error("agent refused: {0}")]
    Remote(WireError),
    #[error("{0}")]
    Internal(String),
    /// The caller cancelled the operation (a restore's unpack).
    #[error("{0}")]
    Cancelled(String),
    /// A host daemon's config check (`exim -bV`) refused what the operation would have
    /// written; the live files were left as they were.
    #[error("{0}")]
    ConfigRejected(String),
}

impl AgentError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }

    /// The protocol error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::NotFound { .. } => ErrorCode::NotFound,
            AgentError::Io { .. } => ErrorCode::Io,
            AgentError::VerifyMismatch { .. } => ErrorCode::VerifyMismatch,
            AgentError::Timeout(_) => ErrorCode::Timeout,
            AgentError::Busy(_) => ErrorCode::Busy,
            AgentError::Unsupported(_) => ErrorCode::Unsupported,
            AgentError::UnsafePath(_) => ErrorCode::UnsafePath,
            AgentError::ToolFailed(_) => ErrorCode::ToolFailed,
            AgentError::InvalidRequest(_) | AgentError::Config(_) => ErrorCode::InvalidRequest,
            AgentError::InvalidAccount(_) => ErrorCode::InvalidAccount,
            AgentError::Cancelled(_) => ErrorCode::Cancelled,
            AgentError::ConfigRejected(_) => ErrorCode::ConfigRejected,
            AgentError::Remote(w) => w.code,
            AgentError::Connect { .. } | AgentError::Protocol(_) | AgentError::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
