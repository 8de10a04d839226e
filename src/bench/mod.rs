//! `kiln bench`: measured throughput of Kiln kernels against yardsticks.

pub mod cpu;
mod handwritten;
