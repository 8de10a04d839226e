//! The crate's error type. Every error that comes from a file names the file (and, where there
//! is one, the tensor, key or line); none of them is a panic.

use std::path::{Path, PathBuf};

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What loading, running or generating with a model can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file is malformed: a bad config value, a truncated header, an offset out of range, a
    /// dataset line that is not what it should be. `location` is `path`, `path:line` or
    /// `path: tensor `name``, whatever pins the problem down.
    #[error("{location}: {message}")]
    Format { location: String, message: String },

    /// Something well-formed that Kiln does not support (a model type, a quantization type, a
    /// rope scaling), with what is supported.
    #[error("{location}: {message}")]
    Unsupported { location: String, message: String },

    /// A kernel or GEMM of the model failed.
    #[error(transparent)]
    Ops(#[from] kiln_ops::Error),

    /// The runtime failed (allocation, transfer, launch).
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::Error),

    /// Bad arguments from the calling program (a token id past the vocabulary, an empty batch).
    #[error("{0}")]
    Invalid(String),

    /// Training cannot go on (steps in a row with a non-finite loss or gradient); the message
    /// says where the last checkpoint is.
    #[error("{0}")]
    Training(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A malformed file: `location` is the file (with a line or tensor where known).
    pub fn format(location: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Format {
            location: location.into(),
            message: message.into(),
        }
    }

    /// Something Kiln does not support, found at `location`.
    pub fn unsupported(location: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Unsupported {
            location: location.into(),
            message: message.into(),
        }
    }
}
