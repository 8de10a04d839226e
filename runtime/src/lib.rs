//! # kiln-runtime
//!
//! Where compiled kernels meet memory: devices (CUDA through cudarc, and the CPU), typed buffers,
//! events, the kernel cache (in memory and on disk) and checked launches. Everything above this
//! crate is written once and runs on either device.
//!
//! ```no_run
//! use kiln_runtime::{Args, Device, KernelCache, KernelSpec};
//! # fn main() -> kiln_runtime::Result<()> {
//! let device = Device::cpu();
//! let cache = KernelCache::new();
//! let source = kiln_compiler::Source::new("scale.kiln", "...");
//! let x = device.upload(&[1.0f32, 2.0, 3.0])?;
//! let mut y = device.alloc(kiln_compiler::DType::F32, 3)?;
//! let spec = KernelSpec::new(&source, "scale").define("BLOCK", 4);
//! let args = Args::new().input("x", &x).output("y", &mut y).i32("n", 3);
//! cache.launch(&device, &spec, [1, 1, 1], &args)?;
//! drop(args); // the launch's borrow of `y` ends here
//! let out: Vec<f32> = y.download()?;
//! # Ok(()) }
//! ```
//!
//! Arguments are bound to the kernel's parameters by name ([`Args`]): a read-only `*T`
//! parameter takes a shared borrow of a buffer or a [`BufferView`] of one, a `*mut T` parameter
//! an exclusive one ([`BufferViewMut`]), so safe code can neither race a kernel nor pass one
//! buffer as both an input and an output. On the CPU every access a kernel makes is checked
//! against the buffer (or view) its pointer came from, and one outside it is an
//! [`Error::OutOfBounds`]; on a GPU the default launch trusts the kernel's masks, and
//! [`KernelCache::with_gpu_bounds_checks`] compiles the same checks in (for test suites).
//!
//! Without the `cuda` feature (on by default) only the CPU device exists, and
//! [`Device::cuda`] says so. The CUDA driver is loaded at run time: a binary built with the
//! feature starts on machines without it, where `Device::cuda` returns
//! [`Error::NoCudaDevice`] with the reason.
//!
//! Matrix products run through [`Device::gemm`] (see [`Gemm`]): the `gemm` crate on the CPU,
//! cuBLASLt on a GPU. Its operands are [`BufferView`]s, so a product can read or write part of
//! a buffer ([`Buffer::slice`]) in place.
//!
//! For hot loops, [`KernelCache::kernel`] returns an `Arc<`[`Kernel`]`>` to keep and launch
//! directly; [`KernelCache::launch`] looks the kernel up on every call (a few microseconds to
//! build its key).
//!
//! Data-parallel training's collectives live in [`collective`]: a [`collective::Communicator`]
//! over NCCL on GPUs, an in-process stand-in for tests on CPU devices, and the TCP rendezvous
//! that starts ranks the way torchrun and SLURM set them up.
//!
//! GPU tests skip with "skipped: no CUDA device" where there is none. To run them on a GPU
//! machine without a Rust toolchain, build the test binary here
//! (`cargo test -p kiln-runtime --test runtime --no-run`) and run it there.

mod buffer;
pub mod cache;
pub mod collective;
mod device;
mod element;
mod error;
mod event;
mod gemm;
mod kernel;
pub mod launch;
pub mod profile;

pub use buffer::{trim_host_pool, Buffer, BufferView, BufferViewMut, PendingRead, Span, SpanMut};
pub use cache::{
    BoundsChecks, CacheKey, CacheStats, DiskCache, KernelCache, KernelSpec, PtxArtifact,
    Specialization,
};
pub use device::{Device, DeviceKind};
pub use element::Element;
pub use error::{Error, Result};
pub use event::Event;
pub use gemm::Gemm;
pub use kernel::Kernel;
pub use launch::Args;
