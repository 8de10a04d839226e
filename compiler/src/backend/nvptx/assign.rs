//! Layout assignment: which tiles live in the tensor-core accumulator layout ([`MmaLayout`])
//! rather than the blocked one.
//!
//! The results of `dot`s that run on tensor cores start in the MMA layout. From there it
//! spreads *forward* to every elementwise op with an MMA operand and to the loop-carried values
//! and `if` results they flow into (so an accumulator stays in fragments across iterations),
//! and *backward* to tiles whose every use is by an op in the MMA layout: loads, broadcasts and
//! elementwise ops that feed only the accumulator's math, and the pointer and mask tiles of a
//! store of an MMA tile. Those are computed directly in fragment order (pointer tiles and masks
//! are usually recomputed per register), so the accumulator never goes through shared memory
//! on its way out. Where an MMA tile meets a blocked one anyway (a reduction, a reshape, a tile
//! that is also used elsewhere), the lowering converts at the use.
//!
//! A `trans` whose only uses are operands of tensor-core dots is never materialised: the dot
//! stages the untransposed tile and reads it with `ldmatrix.trans` instead.

use super::layout::{Blocked, Layout};
use super::mma::{MmaLayout, MmaRows, ATOM_K, ATOM_M};
use super::remat::rematerialisable;
use crate::ir::{DefUse, Inst, Kernel, Op, Use, UseKind, Value};
use crate::types::DType;
use std::collections::HashSet;

/// The layout of every value of a kernel.
pub struct Assignment {
    threads: u32,
    mma: HashSet<Value>,
    /// Row vectors in the rows of the MMA layout ([`Layout::Rows`]).
    rows: HashSet<Value>,
    /// Whether MMA tiles split only their rows over the warps ([`MmaLayout::rows_first`]):
    /// when the kernel reduces MMA tiles along their rows or feeds them to another tensor-core
    /// dot as `a` (flash attention's softmax and `p @ v`). Then row vectors (the results of
    /// those reductions and whatever is broadcast back into the tiles) live in the tiles' rows.
    rows_first: bool,
    /// Every tensor-core accumulator is a `wgmma` accumulator (see [`fits_warpgroups`]).
    warpgroups: bool,
    /// Why not, when the target has `wgmma` and the kernel has tensor-core dots.
    not_warpgroups: Option<String>,
    free_trans: HashSet<Value>,
}

impl Assignment {
    /// Assigns layouts for a block of `threads` threads. With `warpgroups` (the target has
    /// `wgmma`), kernels whose tensor-core dots all have one 16-row atom per warp and whole
    /// warpgroups of rows, and whose accumulators fit the threads' registers
    /// ([`warpgroup_accumulators_fit`]), get the rows-first layout too: it is the `wgmma`
    /// accumulator layout.
    pub fn run(k: &Kernel, du: &DefUse<'_>, threads: u32, warpgroups: bool) -> Assignment {
        let g = Graph::new(du);
        let mut mma = HashSet::new();
        loop {
            let before = mma.len();
            forward(k, &g, threads, &mut mma);
            backward(k, &g, &mut mma);
            if mma.len() == before {
                break;
            }
        }
        let rows_first = g.insts.iter().any(|i| match &i.op {
            Op::Reduce { value, axis: 1, .. } => mma.contains(value),
            Op::Dot { a, .. } => mma.contains(a) && mma.contains(&i.results[0]),
            _ => false,
        });
        let dots: Vec<_> = g
            .insts
            .iter()
            .filter(|i| matches!(i.op, Op::Dot { .. }) && mma.contains(&i.results[0]))
            .map(|i| k.ty(i.results[0]).shape.clone())
            .collect();
        let not_warpgroups = match dots.iter().find(|s| !fits_warpgroups(s[0], s[1], threads)) {
            _ if !warpgroups || dots.is_empty() => None,
            Some(s) => Some(format!(
                "the {} x {} accumulator does not fill whole warpgroups of {} warps (wgmma \
                 needs rows in multiples of 64, at most 16 per warp, num_warps a multiple of \
                 4, and at most 256 columns)",
                s[0],
                s[1],
                threads / 32
            )),
            None if !warpgroup_accumulators_fit(&dots, threads) => Some(format!(
                "the accumulators need more than the {} registers a thread of {threads} may \
                 have (wgmma accumulators cannot spill)",
                register_budget(threads)
            )),
            None => None,
        };
        let warpgroup_tiles = warpgroups && !dots.is_empty() && not_warpgroups.is_none();
        let rows_first = rows_first || warpgroup_tiles;
        let warpgroups = warpgroup_tiles;
        let mut rows = HashSet::new();
        if rows_first {
            loop {
                let before = rows.len();
                rows_forward(k, &g, &mma, &mut rows);
                rows_backward(k, &g, &mma, &mut rows);
                if rows.len() == before {
                    break;
                }
            }
        }
        let free_trans = g
            .insts
            .iter()
            .filter(|i| matches!(i.op, Op::Trans(_)))
            .map(|i| i.results[0])
            .filter(|&t| {
                let uses = du.uses(t);
                !uses.is_empty()
                    && uses.iter().all(|u| match (u.kind, &u.inst.op) {
                        (UseKind::Operand, Op::Dot { a, b, acc }) => {
                            mma.contains(&u.inst.results[0]) && (*a == t || *b == t) && *acc != t
                        }
                        _ => false,
                    })
            })
            .collect();
        Assignment {
            threads,
            mma,
            rows,
            rows_first,
            warpgroups,
            not_warpgroups,
            free_trans,
        }
    }

    /// Why the tensor-core dots do not run as `wgmma` although the target has it (`None` when
    /// they do, or when there are none).
    pub fn why_not_warpgroups(&self) -> Option<String> {
        self.not_warpgroups.clone()
    }

    /// The layout of `v`.
    pub fn layout(&self, k: &Kernel, v: Value) -> Layout {
        let ty = k.ty(v);
        if self.mma.contains(&v) {
            let l = if self.rows_first {
                MmaLayout::rows_first(ty.shape[0], ty.shape[1], self.threads)
            } else {
                MmaLayout::new(ty.shape[0], ty.shape[1], self.threads)
            };
            if let Some(l) = l {
                return Layout::Mma(l);
            }
        }
        if self.rows.contains(&v) {
            let rows = MmaLayout::rows_first(ty.shape[0], ATOM_N_ANY, self.threads)
                .as_ref()
                .and_then(MmaRows::of);
            if let Some(r) = rows {
                return Layout::Rows(r);
            }
        }
        Layout::Blocked(Blocked::new(ty.numel() as u32, self.threads))
    }

    /// Whether the tensor-core dots may run as `wgmma` (the target has it and every
    /// accumulator fits whole warpgroups).
    pub fn warpgroups(&self) -> bool {
        self.warpgroups
    }

    /// A `trans` result that is not materialised (only tensor-core dots read it).
    pub fn is_free_trans(&self, v: Value) -> bool {
        self.free_trans.contains(&v)
    }
}

/// Whether an `[m, n]` accumulator in the rows-first layout over `threads` threads is the
/// accumulator of `wgmma.m64nNk16` run by whole warpgroups: one 16-row atom per warp (so warp
/// `w` of a warpgroup holds rows `16 w ..` of its 64), rows in whole warpgroups, and `n` within
/// the instruction's 256.
pub fn fits_warpgroups(m: u32, n: u32, threads: u32) -> bool {
    let warps = threads / 32;
    warps % 4 == 0 && m % 64 == 0 && m / ATOM_M <= warps && n % 8 == 0 && n <= 256
}

/// Registers of one thread block: the register file of a multiprocessor, 64 K 32-bit
/// registers, shared out among the block's threads.
pub const REGISTERS_PER_BLOCK: u32 = 65536;
/// The most registers one thread may have.
pub const MAX_REGISTERS_PER_THREAD: u32 = 255;

/// Registers each thread of a block of `threads` threads may have.
pub fn register_budget(threads: u32) -> u32 {
    (REGISTERS_PER_BLOCK / threads.max(1)).min(MAX_REGISTERS_PER_THREAD)
}

/// Registers a `wgmma` kernel needs besides its accumulators (descriptors, addresses, masks,
/// loop state): `ptxas` asked for 26 more than the accumulators in the kernels measured.
const WGMMA_OTHER_REGS: u32 = 32;

/// Whether the `wgmma` accumulators of tensor-core dots with these result shapes (in the
/// rows-first layout over `threads` threads) fit in a thread's registers with room for the
/// rest. Unlike those of `mma.sync`, they cannot be spilled: an asynchronous `wgmma` owns its
/// accumulator registers from the fence to the wait, and `ptxas` refuses a kernel whose
/// accumulators do not fit (C7602 "Insufficient registers"). All the dots' accumulators are
/// counted, as if live at once (flash attention's are); the other dots fall back to
/// `mma.sync`, whose layout spreads the tile over every warp.
pub fn warpgroup_accumulators_fit(dots: &[Vec<u32>], threads: u32) -> bool {
    let accumulators: u32 = dots
        .iter()
        .filter_map(|s| MmaLayout::rows_first(s[0], s[1], threads))
        .map(|l| l.regs())
        .sum();
    accumulators + WGMMA_OTHER_REGS <= register_budget(threads)
}

/// Any valid `n` for [`MmaLayout::rows_first`] when only the rows matter.
const ATOM_N_ANY: u32 = super::mma::ATOM_N;

/// Whether a tile of this shape can be a row vector of an MMA tile: `[m]` or `[m, 1]`.
fn row_shape(shape: &[u32]) -> bool {
    match shape {
        [m] | [m, 1] => m % ATOM_M == 0,
        _ => false,
    }
}

fn rows_forward(k: &Kernel, g: &Graph, mma: &HashSet<Value>, rows: &mut HashSet<Value>) {
    for inst in &g.insts {
        match &inst.op {
            Op::Reduce { value, axis: 1, .. }
                if mma.contains(value) && k.ty(*value).shape.len() == 2 =>
            {
                rows.insert(inst.results[0]);
            }
            op if (op.is_elementwise() || matches!(op, Op::Reshape(_)))
                && row_shape(&k.ty(inst.results[0]).shape)
                && op.operands().iter().any(|v| rows.contains(v)) =>
            {
                rows.insert(inst.results[0]);
            }
            _ => carry_through_control(inst, rows),
        }
    }
}

fn rows_backward(k: &Kernel, g: &Graph, mma: &HashSet<Value>, rows: &mut HashSet<Value>) {
    for inst in g.insts.iter().rev() {
        let [r] = inst.results[..] else { continue };
        if rows.contains(&r) || !row_shape(&k.ty(r).shape) {
            continue;
        }
        let candidate = match &inst.op {
            Op::Reshape(_) => true,
            Op::Load { ptr, mask, other } => [Some(ptr), mask.as_ref(), other.as_ref()]
                .into_iter()
                .flatten()
                .all(|v| rows.contains(v) || rematerialisable(k, g.du, *v)),
            op => op.is_elementwise(),
        };
        let uses = g.du.uses(r);
        let wants = |u: &Use| match u.kind {
            UseKind::Flow(to) => rows.contains(&to),
            UseKind::Operand => match &u.inst.op {
                op if op.is_elementwise() || matches!(op, Op::Reshape(_)) => {
                    rows.contains(&u.inst.results[0])
                }
                Op::Broadcast(_) => mma.contains(&u.inst.results[0]),
                _ => false,
            },
        };
        if candidate && !uses.is_empty() && uses.iter().all(wants) {
            rows.insert(r);
        }
    }
}

/// Whether `dot(a, b, _)` runs on tensor cores: `bf16` or `f16` operands, `M` a multiple of 16,
/// `N` of 8 and `K` of 16. Other dots run as FMA loops.
pub fn on_tensor_cores(k: &Kernel, a: Value, b: Value, threads: u32) -> bool {
    let (ta, tb) = (k.ty(a), k.ty(b));
    matches!(ta.dtype(), Some(DType::Bf16 | DType::F16))
        && ta.shape[1] % ATOM_K == 0
        && MmaLayout::new(ta.shape[0], tb.shape[1], threads).is_some()
}

/// The instructions of a kernel in program order (yields left out: their values are flows),
/// and its definitions and uses.
struct Graph<'a, 'k> {
    insts: Vec<&'k Inst>,
    du: &'a DefUse<'k>,
}

impl<'a, 'k> Graph<'a, 'k> {
    fn new(du: &'a DefUse<'k>) -> Graph<'a, 'k> {
        let insts = du
            .insts()
            .map(|(_, i)| i)
            .filter(|i| !matches!(i.op, Op::Yield(_)))
            .collect();
        Graph { insts, du }
    }
}

/// The values a block yields.
fn yields(insts: &[Inst]) -> &[Value] {
    match insts.last().map(|i| &i.op) {
        Some(Op::Yield(vs)) => vs,
        _ => &[],
    }
}

/// Spreads membership of `set` over the values a `for` carries (initial value, block argument,
/// yielded value and result: one layout for all four) and from an `if`'s yields to its results.
fn carry_through_control(inst: &Inst, set: &mut HashSet<Value>) {
    match &inst.op {
        Op::For { init, body, .. } => {
            let next = yields(&body.insts);
            for (i, (&arg, &r)) in body.args[1..].iter().zip(&inst.results).enumerate() {
                let any = [init.get(i), next.get(i), Some(&arg), Some(&r)]
                    .into_iter()
                    .flatten()
                    .any(|v| set.contains(v));
                if any {
                    set.insert(arg);
                    set.insert(r);
                }
            }
        }
        Op::If {
            then_block,
            else_block,
            ..
        } => {
            let (t, e) = (yields(&then_block.insts), yields(&else_block.insts));
            for (i, &r) in inst.results.iter().enumerate() {
                if [t.get(i), e.get(i)]
                    .into_iter()
                    .flatten()
                    .any(|v| set.contains(v))
                {
                    set.insert(r);
                }
            }
        }
        _ => {}
    }
}

fn forward(k: &Kernel, g: &Graph, threads: u32, mma: &mut HashSet<Value>) {
    for inst in &g.insts {
        match &inst.op {
            Op::Dot { a, b, .. } if on_tensor_cores(k, *a, *b, threads) => {
                mma.insert(inst.results[0]);
            }
            op if op.is_elementwise() && op.operands().iter().any(|v| mma.contains(v)) => {
                mma.insert(inst.results[0]);
            }
            _ => carry_through_control(inst, mma),
        }
    }
}

fn backward(k: &Kernel, g: &Graph, mma: &mut HashSet<Value>) {
    for inst in g.insts.iter().rev() {
        let [r] = inst.results[..] else { continue };
        if mma.contains(&r) {
            continue;
        }
        let candidate = match &inst.op {
            Op::Broadcast(_) => true,
            Op::Load { ptr, mask, other } => [Some(ptr), mask.as_ref(), other.as_ref()]
                .into_iter()
                .flatten()
                .all(|v| mma.contains(v) || rematerialisable(k, g.du, *v)),
            op => op.is_elementwise(),
        };
        let uses = g.du.uses(r);
        if candidate && !uses.is_empty() && uses.iter().all(|u| feeds_mma(u, r, mma)) {
            mma.insert(r);
        }
    }
}

/// Whether use `u` of `v` wants `v` in the MMA layout.
fn feeds_mma(u: &Use, v: Value, mma: &HashSet<Value>) -> bool {
    match u.kind {
        UseKind::Flow(to) => mma.contains(&to),
        UseKind::Operand => match &u.inst.op {
            op if op.is_elementwise() => mma.contains(&u.inst.results[0]),
            Op::Dot { acc, .. } => *acc == v && mma.contains(&u.inst.results[0]),
            Op::Store { value, .. } | Op::AtomicAdd { value, .. } => {
                *value != v && mma.contains(value)
            }
            _ => false,
        },
    }
}
