//! The compiler's integration tests, in one binary (linking is slow; one binary links once).

mod docs;
mod errors;
mod fuzz;
mod kernels;
mod passes;
mod sema;
