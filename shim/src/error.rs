//! The shim's errors, and the one place they become ttrpc status codes for containerd.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc::{self, Code};

use crate::agent::AgentError;
use crate::config::ConfigError;

/// Everything a task-service call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("cannot {op} {what}: it is {state}")]
    InvalidState {
        what: String,
        state: &'static str,
        op: &'static str,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0} is not implemented by husk")]
    Unimplemented(&'static str),
    #[error("reading bundle spec {path}: {msg}")]
    Spec { path: PathBuf, msg: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("starting the vm: {0}")]
    VmStart(String),
    #[error("the pod's vm is not running ({0})")]
    VmGone(String),
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error("{context}: {err}")]
    Io {
        context: String,
        #[source]
        err: std::io::Error,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error(transparent)]
    PodDir(#[from] crate::poddir::PodDirError),
}

impl ShimError {
    /// An I/O error with what was being done (and on which path).
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        ShimError::Io {
            context: context.into(),
            err,
        }
    }

    /// The ttrpc status code containerd sees (containerd's errdefs map these back to its
    /// own error classes, e.g. NotFound on a kill of a finished process is not an error).
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidState { .. } | ShimError::VmGone(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) | ShimError::Spec { .. } => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Config(_) => Code::FAILED_PRECONDITION,
            ShimError::Agent(e) => e.code(),
            ShimError::Timeout(_) => Code::DEADLINE_EXCEEDED,
            ShimError::VmStart(_) | ShimError::Io { .. } | ShimError::PodDir(_) => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes() {
        assert_eq!(
            status(ShimError::NotFound("container c1".into())),
            (Code::NOT_FOUND, "container c1 not found".into())
        );
        let (code, msg) = status(ShimError::InvalidState {
            what: "container c1".into(),
            state: "running",
            op: "delete",
        });
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert_eq!(msg, "cannot delete container c1: it is running");
        assert_eq!(
            status(ShimError::Unimplemented("checkpoint")).0,
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            status(ShimError::Agent(AgentError::Unavailable("eof".into()))).0,
            Code::UNAVAILABLE
        );
        assert_eq!(
            status(ShimError::Timeout("agent".into())).0,
            Code::DEADLINE_EXCEEDED
        );
    }
}
