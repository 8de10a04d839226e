//! # kiln-ops
//!
//! The fused operations of a training step, each written as a Kiln kernel in `ops/kernels/` and
//! wrapped in a typed Rust function that picks block sizes and launches it: RMSNorm, SwiGLU,
//! QK-RoPE, cross-entropy over vocabulary chunks, AdamW, elementwise helpers.

pub mod kernels;
