//! The crate's error type.

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime refused or failed a launch, an allocation or a GEMM.
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::Error),

    /// Buffers that do not fit the shapes given, named by operation and argument.
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },
}

impl Error {
    pub(crate) fn shape(op: &'static str, message: impl Into<String>) -> Error {
        Error::Shape {
            op,
            message: message.into(),
        }
    }
}
