//! The crate's error type.

use std::path::PathBuf;

use kiln_compiler::backend::BackendError;
use kiln_compiler::{CompileError, DType};

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the runtime can fail with. Messages name the kernel, parameter or buffer at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `Device::cuda` found no usable GPU; `reason` says why (no driver library, no device, ...).
    #[error("no CUDA device: {reason}")]
    NoCudaDevice { reason: String },

    /// A CUDA driver call failed; `context` says what was being done.
    #[error("CUDA error while {context}: {message}")]
    Cuda { context: String, message: String },

    /// The source did not compile.
    #[error("{0}")]
    Compile(#[from] CompileError),

    /// A code generator failed.
    #[error(transparent)]
    Backend(#[from] BackendError),

    /// The source compiled but defines no kernel of that name.
    #[error("kernel `{name}` not found in {source_name}; kernels there: {available}")]
    KernelNotFound {
        name: String,
        source_name: String,
        available: String,
    },

    /// A launch was refused before anything ran: wrong argument count, kind, dtype or device,
    /// or a grid the device cannot run.
    #[error("launch of kernel `{kernel}`: {message}")]
    Launch { kernel: String, message: String },

    /// A launch's kernel tried to access memory outside the buffer (or view) one of its pointer
    /// arguments came from. The access was skipped; the kernel's outputs may be partly written.
    #[error(
        "kernel `{kernel}`, program {program:?}: {access} through `{param}` at element \
         {offset} is outside its buffer of {len} elements"
    )]
    OutOfBounds {
        kernel: String,
        program: [u32; 3],
        /// `a load`, `a store` or `an atomic add`.
        access: &'static str,
        param: String,
        /// Elements from the start of the argument's buffer or view (negative before it).
        offset: i64,
        len: u64,
    },

    /// A buffer was read or written as an element type other than its own.
    #[error("buffer holds {actual} elements, not {requested}")]
    DTypeMismatch { actual: DType, requested: DType },

    /// A host slice does not fit a buffer.
    #[error("length mismatch: buffer has {buffer} elements, host data has {host}")]
    LengthMismatch { buffer: usize, host: usize },

    /// A range of a buffer or view reaches past its end (or starts after it ends).
    #[error("range {start}..{end} is out of bounds of {len} elements")]
    OutOfRange {
        start: usize,
        end: usize,
        len: usize,
    },

    /// A GEMM was refused (shapes, dtypes, devices, overlapping operands) or failed in the
    /// library that runs it. `gemm` describes the product, e.g. `m=8 n=4 k=2 (A, B^T)`.
    #[error("gemm {gemm}: {message}")]
    Gemm { gemm: String, message: String },

    /// A library loaded at run time (cuBLASLt) is missing or unusable; `reason` says where it
    /// was looked for.
    #[error("{library} not found: {reason}")]
    LibraryNotFound {
        library: &'static str,
        reason: String,
    },

    /// Memory could not be allocated.
    #[error("out of memory: cannot allocate {bytes} bytes on {device}")]
    OutOfMemory { bytes: usize, device: String },

    /// The operation does not exist on this device or in this build.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A collective, the rendezvous of the ranks of a data-parallel run, or their launch
    /// environment failed; the message names the operation, the ranks and the limit at fault.
    #[error("{0}")]
    Distributed(String),

    /// A file of the on-disk kernel cache could not be read or written.
    #[error("kernel cache: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn launch(kernel: &str, message: impl Into<String>) -> Error {
        Error::Launch {
            kernel: kernel.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(context: impl Into<String>, err: cudarc::driver::DriverError) -> Error {
        Error::Cuda {
            context: context.into(),
            message: err.to_string(),
        }
    }
}
