//! Code generators: tile IR to native code (Cranelift) and to PTX (LLVM NVPTX).

pub mod cranelift;
#[cfg(feature = "nvptx")]
pub mod nvptx;

/// A failure inside a code generator. User errors are caught by `sema`; this names the kernel
/// and what the backend could not do.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend, kernel `{kernel}`: {message}")]
pub struct BackendError {
    pub backend: &'static str,
    pub kernel: String,
    pub message: String,
}
