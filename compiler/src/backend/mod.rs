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

/// What a memory access does, as a bounds-checked kernel records it in its fault record (the
/// same codes on both backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Load = 1,
    Store = 2,
    AtomicAdd = 3,
}

impl AccessKind {
    /// The kind a fault record's code names.
    pub fn from_code(code: u64) -> Option<AccessKind> {
        match code {
            1 => Some(AccessKind::Load),
            2 => Some(AccessKind::Store),
            3 => Some(AccessKind::AtomicAdd),
            _ => None,
        }
    }

    /// The access as a noun (`a store`).
    pub fn describe(self) -> &'static str {
        match self {
            AccessKind::Load => "a load",
            AccessKind::Store => "a store",
            AccessKind::AtomicAdd => "an atomic add",
        }
    }
}
