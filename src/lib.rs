//! # Kiln
//!
//! A tile-level kernel language with a JIT compiler (to PTX through LLVM, and to native code
//! through Cranelift), and an LLM fine-tuning runtime built on its kernels. This crate re-exports
//! the layers for library users and hosts the `kiln` command line.

pub use kiln_compiler as compiler;
pub use kiln_models as models;
pub use kiln_ops as ops;
pub use kiln_runtime as runtime;
