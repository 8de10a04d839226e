//! The compiler's integration tests, in one binary (linking is slow; one binary links once).

#[cfg(feature = "nvptx")]
mod checks;
mod cranelift;
mod docs;
mod errors;
mod fuzz;
mod fuzz_valid;
mod generic;
mod kernels;
mod layouts;
#[cfg(feature = "nvptx")]
mod nvptx;
#[cfg(feature = "nvptx")]
mod nvptx_checked;
#[cfg(feature = "nvptx")]
mod nvptx_dot;
#[cfg(feature = "nvptx")]
mod nvptx_layout;
#[cfg(feature = "nvptx")]
mod nvptx_mma;
#[cfg(feature = "nvptx")]
mod nvptx_ptxas;
#[cfg(feature = "nvptx")]
mod nvptx_robustness;
#[cfg(feature = "nvptx")]
mod nvptx_snapshots;
mod papercuts;
mod parse;
mod passes;
mod sema;
mod shipped_generic;
