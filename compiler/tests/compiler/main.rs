//! The compiler's integration tests, in one binary (linking is slow; one binary links once).

mod kernels;
mod passes;
mod sema;
mod cranelift;
