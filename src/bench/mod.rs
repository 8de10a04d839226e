//! `kiln bench`: measured throughput of Kiln kernels against yardsticks.

pub mod cpu;
mod gpu;
mod handwritten;
pub mod jit;
pub mod kernels;
pub mod ops;
