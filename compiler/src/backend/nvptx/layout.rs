//! How a tile is spread over the threads of a block.
//!
//! Every tile uses a *blocked* layout that depends only on its element count `n` (a power of
//! two) and the block size `t`: the tile is flattened row-major, and
//! - if `n >= t`, thread `tid` owns `regs = n / t` elements in runs of `vec` contiguous ones:
//!   register `r * vec + j` holds element `(r * t + tid) * vec + j`;
//! - if `n < t`, the tile is replicated: thread `tid` holds element `tid % n` in one register,
//!   and only threads `tid < n` *own* their element (they alone store it or add it to a sum).
//!
//! A scalar is the case `n = 1`: every thread holds the same value. Because the layout ignores
//! the shape, `reshape` is free and elementwise ops work register by register; ops that move
//! elements between threads (broadcast, reduce, trans, dot) go through shared memory or warp
//! shuffles, except broadcasts of tiles that can be recomputed where they are needed. Other layouts (MMA fragments for tensor cores) would be further variants here.

/// The most contiguous elements one thread holds in a run: 8 (16 bytes of `bf16`; `f32` runs
/// are then read as two 16-byte vectors).
pub const MAX_VEC: u32 = 8;

/// The blocked layout of a tile of `numel` elements over `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub numel: u32,
    pub threads: u32,
    /// Contiguous elements per run.
    pub vec: u32,
    /// Registers per thread.
    pub regs: u32,
}

impl Layout {
    pub fn new(numel: u32, threads: u32) -> Layout {
        let per_thread = (numel / threads).max(1);
        Layout {
            numel,
            threads,
            vec: per_thread.min(MAX_VEC),
            regs: per_thread,
        }
    }

    /// True when threads hold copies of each other's elements.
    pub fn replicated(&self) -> bool {
        self.numel < self.threads
    }

    /// The flat element index of register `reg` is `tid * tid_stride() + reg_offset(reg)`
    /// (masked with `numel - 1` when replicated).
    pub fn tid_stride(&self) -> u32 {
        if self.replicated() {
            1
        } else {
            self.vec
        }
    }

    /// See [`Layout::tid_stride`].
    pub fn reg_offset(&self, reg: u32) -> u32 {
        if self.replicated() {
            0
        } else {
            (reg / self.vec) * self.threads * self.vec + reg % self.vec
        }
    }
}

/// Multi-dimensional index of a flat row-major index, as (shift, mask) per dimension: every
/// dimension is a power of two, so `index[d] = (flat >> shift) & (dim - 1)`.
pub fn dim_shifts(shape: &[u32]) -> Vec<u32> {
    let mut shifts = vec![0; shape.len()];
    let mut s = 0;
    for d in (0..shape.len()).rev() {
        shifts[d] = s;
        s += shape[d].trailing_zeros();
    }
    shifts
}
