//! The compiler's integration tests, in one binary (linking is slow; one binary links once).

mod cranelift;
mod docs;
mod errors;
mod fuzz;
mod kernels;
mod nvptx;
mod nvptx_layout;
mod nvptx_ptxas;
mod parse;
mod passes;
mod sema;
