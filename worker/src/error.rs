//! Errors of the worker.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] dmf_db::Error),
    #[error("job {key}: {message}")]
    Job { key: String, message: String },
}
