//! How a tile is spread over the threads of a block.
//!
//! A [`Layout`] says which elements of a tile each thread holds in its registers. There are two:
//!
//! - [`Blocked`], the default, which depends only on the tile's element count `n` (a power of
//!   two) and the block size `t`: the tile is flattened row-major, and
//!   - if `n >= t`, thread `tid` owns `regs = n / t` elements in runs of `vec` contiguous ones:
//!     register `r * vec + j` holds element `(r * t + tid) * vec + j`;
//!   - if `n < t`, the tile is replicated: thread `tid` holds element `tid % n` in one register,
//!     and only threads `tid < n` *own* their element (they alone store it or add it to a sum).
//!
//!   A scalar is the case `n = 1`: every thread holds the same value. Because the layout ignores
//!   the shape, `reshape` is free and elementwise ops work register by register.
//! - [`MmaLayout`], the accumulator fragments of the tensor-core `mma` instruction, tiled over
//!   the warps (see [`super::mma`]). Only 2-D tiles have it, and only those the layout
//!   assignment ([`super::assign`]) picks: results of `dot` on tensor cores, and the values
//!   computed from them elementwise or carried with them through loops.
//!
//! Both are *linear in bit fields of the thread id*: the flat index of the element register
//! `reg` of thread `tid` holds is `sum((tid >> shift & mask) * mul) + reg_offset(reg)` over the
//! layout's [`TidTerm`]s. Code generation emits exactly that sum, so the layout functions here
//! are the single description both the generated code and the tests use.
//!
//! Ops that move elements between threads (broadcast, reduce, trans, dot, layout conversions)
//! go through shared memory or warp shuffles, except for tiles that can be recomputed where they
//! are needed (index grids, masks and pointer tiles: see `remat`).

use super::mma::{MmaLayout, MmaRows};

/// The most contiguous elements one thread holds in a run: 8 (16 bytes of `bf16`; `f32` runs
/// are then read as two 16-byte vectors).
pub const MAX_VEC: u32 = 8;

/// One term of a layout's thread-dependent part: `(tid >> shift & mask) * mul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TidTerm {
    pub shift: u32,
    pub mask: u32,
    pub mul: u32,
}

impl TidTerm {
    pub fn eval(&self, tid: u32) -> u32 {
        (tid >> self.shift & self.mask) * self.mul
    }
}

/// Where the elements of a tile live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Blocked(Blocked),
    Mma(MmaLayout),
    /// A row vector spread like the rows of an MMA tile (see [`MmaRows`]).
    Rows(MmaRows),
}

impl Layout {
    /// Registers per thread.
    pub fn regs(&self) -> u32 {
        match self {
            Layout::Blocked(l) => l.regs,
            Layout::Mma(l) => l.regs(),
            Layout::Rows(l) => l.regs(),
        }
    }

    /// Registers `[g * vec, (g + 1) * vec)` hold contiguous elements, the first at a flat index
    /// that is a multiple of `vec`.
    pub fn vec(&self) -> u32 {
        match self {
            Layout::Blocked(l) => l.vec,
            Layout::Mma(_) => MmaLayout::VEC,
            Layout::Rows(_) => 1,
        }
    }

    /// Threads `tid < owners()` own their elements; the others hold copies. Every element has
    /// exactly one owner. ([`Layout::Rows`] owners are not a prefix: see [`Layout::owns`].)
    pub fn owners(&self) -> u32 {
        match self {
            Layout::Blocked(l) if l.replicated() => l.numel,
            Layout::Blocked(l) => l.threads,
            Layout::Mma(l) => l.owners(),
            // Not a prefix of the threads: see `owns`.
            Layout::Rows(l) => l.threads,
        }
    }

    /// Whether thread `tid` owns its elements.
    pub fn owns(&self, tid: u32) -> bool {
        match self {
            Layout::Rows(l) => l.owns(tid),
            l => tid < l.owners(),
        }
    }

    /// The thread-dependent terms of the flat index.
    pub fn tid_terms(&self) -> Vec<TidTerm> {
        match self {
            Layout::Blocked(l) => vec![l.tid_term()],
            Layout::Mma(l) => l.tid_terms(),
            Layout::Rows(l) => l.tid_terms(),
        }
    }

    /// The register-dependent part of the flat index.
    pub fn reg_offset(&self, reg: u32) -> u32 {
        match self {
            Layout::Blocked(l) => l.reg_offset(reg),
            Layout::Mma(l) => l.reg_offset(reg),
            Layout::Rows(l) => l.reg_offset(reg),
        }
    }

    /// The flat index of the element register `reg` of thread `tid` holds.
    pub fn element(&self, tid: u32, reg: u32) -> u32 {
        let t: u32 = self.tid_terms().iter().map(|t| t.eval(tid)).sum();
        t + self.reg_offset(reg)
    }
}

/// The blocked layout of a tile of `numel` elements over `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub numel: u32,
    pub threads: u32,
    /// Contiguous elements per run.
    pub vec: u32,
    /// Registers per thread.
    pub regs: u32,
}

impl Blocked {
    pub fn new(numel: u32, threads: u32) -> Blocked {
        let per_thread = (numel / threads).max(1);
        Blocked {
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

    /// The thread's part of the flat index: `tid * vec`, or `tid % numel` when replicated.
    pub fn tid_term(&self) -> TidTerm {
        if self.replicated() {
            TidTerm {
                shift: 0,
                mask: self.numel - 1,
                mul: 1,
            }
        } else {
            TidTerm {
                shift: 0,
                mask: self.threads - 1,
                mul: self.vec,
            }
        }
    }

    /// The register's part of the flat index.
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
