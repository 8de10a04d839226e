//! # kiln-runtime
//!
//! Where compiled kernels meet memory: devices (CUDA through cudarc, and the CPU), typed buffers,
//! streams, the kernel cache (in memory and on disk) and checked launches. Later: GEMM through
//! cuBLASLt on the GPU and a GEMM library on the CPU. Everything above this crate is written once
//! and runs on either device.
