//! `kiln bench`: measured throughput of Kiln kernels against yardsticks.

pub mod cpu;
pub mod data;
pub mod gemm;
mod gpu;
mod handwritten;
pub mod jit;
pub mod kernels;
pub mod ops;
pub mod train;
