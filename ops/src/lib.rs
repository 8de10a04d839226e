//! # kiln-ops
//!
//! The fused operations of a training step, each written as a Kiln kernel in `ops/kernels/` and
//! wrapped in a typed Rust function that checks its buffers, picks block sizes and launches it
//! on either device: RMSNorm (and the fused residual add + RMSNorm), SwiGLU, QK-RoPE, token
//! embedding, cut cross-entropy over vocabulary chunks, AdamW with on-device gradient clipping.
//!
//! Every operation takes an [`Ops`] (a device and its kernels) and tensors with the shapes its
//! doc comment gives. What it only reads is a shared borrow (`&buffer`, or a
//! [`kiln_runtime::BufferView`] of part of one); what it writes, or updates in place, an
//! exclusive one (`&mut buffer`, or a [`kiln_runtime::BufferViewMut`] such as a slice of an
//! arena), so no output can alias an input. A tensor of the wrong length or type is an
//! [`Error::Shape`] naming the operation and the argument, before anything runs.
//!
//! The activation kernels are generic over their element type (`T: type = bf16` in the
//! sources): one source serves bf16, f32 and f16. A wrapper takes `T` from its first activation
//! argument (`x`, `gate`, `q`, ...), which every other activation of the call must share, and
//! compiles the kernel for it; statistics, accumulators and parameter gradients stay f32
//! whatever `T` is. Cut cross-entropy takes bf16 or f32 (its GEMMs'); on the GPU, f32
//! attention runs its dots as FMA loops rather than on tensor cores (correct, far slower).

pub mod adamw;
pub mod attention;
mod context;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
mod error;
pub mod kernels;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

pub use context::Ops;
pub use error::{Error, Result};
