//! Errors of manifest parsing, enqueueing and scheduling.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is malformed; the message names the line and field.
    #[error("{file}:{line}: {message}")]
    Manifest { file: String, line: usize, message: String },
    #[error("cluster {cluster:?} (line {line}): source unreachable: {message}; nothing was enqueued")]
    Unreachable { cluster: String, line: usize, message: String },
    #[error(transparent)]
    Db(#[from] dmf_db::Error),
}
