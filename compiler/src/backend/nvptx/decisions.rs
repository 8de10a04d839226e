//! Everything the GPU lowering decides about a kernel before it emits an instruction: each
//! value's [`Layout`] (from [`Assignment`]), the width of each memory access (from
//! [`AxisAnalysis`]), whether each `dot` runs as an FMA loop, `mma.sync` or `wgmma`, and how
//! each loop is pipelined (see `pipeline`). The lowering reads its choices from here, and
//! [`Annotations`] prints the same facts next to the IR (`kiln compile --emit layouts`, through
//! `backend::print_layouts_gpu`), so what is printed is what is compiled.
//!
//! Where an optimisation the options ask for does not apply (loop pipelining with
//! `num_stages > 1`, vector accesses with alignment specialisation, `wgmma` on sm_90a), a
//! [`Note`] says which and why.

use super::assign::{on_tensor_cores, Assignment};
use super::axis::AxisAnalysis;
use super::layout::Layout;
use super::mma::{MmaLayout, SharedTile, ATOM_K};
use super::wgmma::{has_descriptor, is_warpgroup_accumulator};
use super::{Arch, PtxOptions};
use crate::ir::{self, ConstValue, DefUse, Inst, Kernel, Op, Value};
use crate::types::DType;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// The decisions for one kernel under one set of options.
pub struct Decisions<'a> {
    pub k: &'a Kernel,
    pub du: DefUse<'a>,
    pub assign: Assignment,
    pub axis: AxisAnalysis,
    /// Values that are constant positive zeros (a masked load's `other` that needs no select).
    pub zeros: HashSet<Value>,
    pub threads: u32,
    pub arch: Arch,
    pub num_stages: u32,
    /// Tensor-core dots may run as `wgmma` ([`Assignment::warpgroups`]).
    pub wgmma: bool,
    /// Some parameter is specialised as 16-byte aligned or 16-divisible.
    pub aligned: bool,
}

/// How a `dot` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DotPath {
    /// An FMA loop over the depth, one per accumulator register; why not tensor cores.
    Fma(String),
    /// `mma.sync.m16n8k16` per warp; `a_in_registers` when `a` is repacked from an earlier
    /// dot's accumulator instead of staged in shared memory.
    MmaSync { a_in_registers: bool },
    /// `wgmma.mma_async` per warpgroup.
    Wgmma { a_in_registers: bool },
}

/// The width of one memory access and what bounds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessWidth {
    /// Elements per access.
    pub width: u32,
    /// The widest the layout allows (contiguous registers, at most 16 bytes).
    pub most: u32,
    /// What kept it below `most`, if anything did.
    pub limit: Option<WidthLimit>,
}

/// Why an access is narrower than its layout allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WidthLimit {
    /// `bool` tiles are read and written a byte at a time.
    Bool,
    /// An atomic add is one element at a time.
    Atomic,
    /// The addresses are contiguous only over runs of this many elements.
    Contiguity(u32),
    /// The mask is constant only over runs of this many elements.
    Mask(u32),
    /// The first address of a run is known to be a multiple of only this many bytes.
    Alignment(u64),
}

impl fmt::Display for WidthLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WidthLimit::Bool => write!(f, "bool elements are accessed one at a time"),
            WidthLimit::Atomic => write!(f, "atomics are one element at a time"),
            WidthLimit::Contiguity(c) => {
                write!(f, "the addresses are contiguous over runs of {c} only")
            }
            WidthLimit::Mask(c) => write!(f, "the mask is constant over runs of {c} only"),
            WidthLimit::Alignment(b) => {
                write!(f, "the addresses are known to be {b}-byte aligned only")
            }
        }
    }
}

/// An optimisation the options asked for that does not apply, and why.
#[derive(Clone, Debug)]
pub struct Note<'a> {
    /// The instruction (a load, store or dot) it is about; `None` for the whole kernel.
    pub inst: Option<&'a Inst>,
    pub message: String,
}

impl<'a> Decisions<'a> {
    /// Runs the analyses the lowering of `k` with `opts` needs.
    pub fn new(k: &'a Kernel, opts: &PtxOptions) -> Decisions<'a> {
        let du = DefUse::new(&k.body);
        let threads = 32 * opts.num_warps;
        let assign = Assignment::run(k, &du, threads, opts.arch.has_wgmma());
        Decisions {
            k,
            wgmma: assign.warpgroups(),
            assign,
            axis: AxisAnalysis::run(k, opts),
            zeros: zero_constants(&du),
            du,
            threads,
            arch: opts.arch,
            num_stages: opts.num_stages,
            aligned: opts.divisible_by_16 != 0,
        }
    }

    /// The layout of value `v`.
    pub fn layout(&self, v: Value) -> Layout {
        self.assign.layout(self.k, v)
    }

    /// The op that defines `v`, if an instruction does.
    pub fn def(&self, v: Value) -> Option<&'a Op> {
        self.du.def_op(v)
    }

    /// Elements per memory access through `ptr` in layout `l` (1, or a power of two up to 16
    /// bytes).
    pub fn vector_width(&self, l: &Layout, ptr: Value, mask: Option<Value>, d: DType) -> u32 {
        self.access_width(l, ptr, mask, d).width
    }

    /// The width of an access through `ptr` in layout `l`, and what limits it.
    pub fn access_width(
        &self,
        l: &Layout,
        ptr: Value,
        mask: Option<Value>,
        d: DType,
    ) -> AccessWidth {
        let esize = d.size_bytes() as u64;
        let most = l.vec().min((16 / esize) as u32).max(1);
        if d == DType::Bool {
            let limit = (most > 1).then_some(WidthLimit::Bool);
            return AccessWidth {
                width: 1,
                most,
                limit,
            };
        }
        let info = self.axis.get(ptr);
        let mut w = most;
        let mut limit = None;
        if info.contig < w {
            w = info.contig;
            limit = Some(WidthLimit::Contiguity(info.contig));
        }
        if let Some(m) = mask {
            let c = self.axis.get(m).constancy;
            if c < w {
                w = c;
                limit = Some(WidthLimit::Mask(c));
            }
        }
        while w > 1 && info.div < w as u64 * esize {
            w /= 2;
            limit = Some(WidthLimit::Alignment(info.div));
        }
        AccessWidth {
            width: w.max(1),
            most,
            limit,
        }
    }

    /// The layout a `load` result, `store` or `atomic_add` accesses memory in, and the width
    /// of its accesses.
    pub fn memory_access(&self, inst: &Inst) -> Option<(Layout, AccessWidth)> {
        match &inst.op {
            Op::Load { ptr, mask, .. } => {
                let l = self.layout(inst.results[0]);
                let d = self.k.ty(*ptr).elem.pointee()?;
                Some((l, self.access_width(&l, *ptr, *mask, d)))
            }
            Op::Store { ptr, value, mask } => {
                let l = self.store_layout(*ptr, *value);
                let d = self.k.ty(*ptr).elem.pointee()?;
                Some((l, self.access_width(&l, *ptr, *mask, d)))
            }
            Op::AtomicAdd { ptr, value, .. } => {
                let l = self.store_layout(*ptr, *value);
                let most = l.vec().max(1);
                let limit = (most > 1).then_some(WidthLimit::Atomic);
                Some((
                    l,
                    AccessWidth {
                        width: 1,
                        most,
                        limit,
                    },
                ))
            }
            _ => None,
        }
    }

    /// The layout a store of `value` through `ptr` writes in: the value's if it is an MMA tile
    /// (the pointers and mask are recomputed in it), else the pointers'.
    pub fn store_layout(&self, ptr: Value, value: Value) -> Layout {
        match self.layout(value) {
            l @ Layout::Mma(_) => l,
            Layout::Blocked(_) | Layout::Rows(_) => self.layout(ptr),
        }
    }

    /// The operand a dot stages for `v`: `v` itself, or `x` for a `trans(x)` the dot absorbs.
    pub fn staged_source(&self, v: Value) -> Value {
        match self.def(v) {
            Some(Op::Trans(x)) => *x,
            _ => v,
        }
    }

    /// The layout of `a` when a tensor-core dot with result layout `l` can take it from
    /// registers: an MMA tile whose warps hold exactly the rows of `l` and the whole depth, so
    /// its accumulator atoms are the `a` fragments.
    pub fn a_in_registers(&self, a: Value, l: &MmaLayout) -> Option<MmaLayout> {
        let Layout::Mma(la) = self.layout(a) else {
            return None;
        };
        let fits = la.warps_n == 1
            && la.warp_row_term() == l.warp_row_term()
            && la.atoms_m() == l.atoms_m()
            && la.warps_m * la.warps_n == l.warps_m * l.warps_n
            && la.n % ATOM_K == 0;
        fits.then_some(la)
    }

    /// How `r = dot(a, b, _)` runs.
    pub fn dot_path(&self, a: Value, b: Value, r: Value) -> DotPath {
        let Layout::Mma(l) = self.layout(r) else {
            return DotPath::Fma(self.why_not_tensor_cores(a, b));
        };
        let a_in_registers = self.a_in_registers(a, &l).is_some();
        match self.why_not_wgmma(a, b, &l, a_in_registers) {
            None => DotPath::Wgmma { a_in_registers },
            Some(_) => DotPath::MmaSync { a_in_registers },
        }
    }

    /// Why `dot(a, b)` is not on tensor cores.
    fn why_not_tensor_cores(&self, a: Value, b: Value) -> String {
        let (ta, tb) = (self.k.ty(a), self.k.ty(b));
        let (m, kk, n) = (ta.shape[0], ta.shape[1], tb.shape[1]);
        match ta.dtype() {
            Some(DType::Bf16 | DType::F16) => {}
            Some(d) => return format!("its operands are {d}; tensor cores take bf16 or f16"),
            None => return "its operands are pointers".into(),
        }
        if on_tensor_cores(self.k, a, b, self.threads) {
            return "its result is not in the tensor-core layout".into();
        }
        if kk % ATOM_K != 0 {
            return format!("its depth K = {kk} is not a multiple of {ATOM_K}");
        }
        format!(
            "its {m} x {n} result does not split into 16 x 8 atoms over {} warps",
            self.threads / 32
        )
    }

    /// Why a tensor-core dot with result layout `l` does not run as `wgmma`; `None` if it
    /// does.
    pub fn why_not_wgmma(
        &self,
        a: Value,
        b: Value,
        l: &MmaLayout,
        a_in_registers: bool,
    ) -> Option<String> {
        if !self.arch.has_wgmma() {
            return Some(format!("{} has no wgmma (sm_90a has)", self.arch.name()));
        }
        if !self.wgmma {
            return Some(self.assign.why_not_warpgroups().unwrap_or_default());
        }
        if !is_warpgroup_accumulator(l) {
            return Some(format!(
                "its {} x {} accumulator is not one 16-row atom per warp of whole warpgroups",
                l.m, l.n
            ));
        }
        let operands = [(!a_in_registers).then_some(("a", a)), Some(("b", b))];
        for (name, v) in operands.into_iter().flatten() {
            let tile = self.shared_tile(self.staged_source(v));
            if !has_descriptor(&tile) {
                return Some(format!(
                    "operand `{name}` has rows of {} bytes in shared memory; wgmma descriptors \
                     need 32, 64 or 128",
                    2 * tile.panel_cols()
                ));
            }
        }
        None
    }

    /// The shared-memory tile a 2-D operand is staged (or pipelined) as.
    pub fn shared_tile(&self, v: Value) -> SharedTile {
        let shape = &self.k.ty(v).shape;
        SharedTile {
            rows: shape[0],
            cols: shape[1],
            base: 0,
        }
    }

    /// Every note for the kernel: the optimisations the options ask for that do not apply.
    pub fn notes(&self) -> Vec<Note<'a>> {
        let mut notes = vec![];
        let mut candidates = 0;
        let mut pipelined = 0;
        for (_, inst) in self.du.insts() {
            match &inst.op {
                Op::Dot { a, b, .. } => {
                    let r = inst.results[0];
                    if let Layout::Mma(l) = self.layout(r) {
                        let regs = self.a_in_registers(*a, &l).is_some();
                        if self.arch.has_wgmma() {
                            if let Some(why) = self.why_not_wgmma(*a, *b, &l, regs) {
                                notes.push(Note {
                                    inst: Some(inst),
                                    message: format!("dot runs as mma.sync, not wgmma: {why}"),
                                });
                            }
                        }
                    }
                }
                Op::For { body, .. } if self.num_stages > 1 => {
                    let report = self.pipeline_report(body);
                    candidates += report.candidates;
                    if report.plan.is_some() {
                        pipelined += 1;
                    }
                    for (v, why) in report.skipped {
                        notes.push(Note {
                            inst: self.du.def(v),
                            message: format!("load is not pipelined: {why}"),
                        });
                    }
                }
                Op::Load { .. } | Op::Store { .. } if self.aligned => {
                    let Some((_, w)) = self.memory_access(inst) else {
                        continue;
                    };
                    let what = if inst.results.is_empty() {
                        "store"
                    } else {
                        "load"
                    };
                    if let Some(limit) = w.limit {
                        notes.push(Note {
                            inst: Some(inst),
                            message: format!(
                                "{what} is {} element(s) wide, not {}: {limit}",
                                w.width, w.most
                            ),
                        });
                    }
                }
                _ => {}
            }
        }
        if self.num_stages > 1 && pipelined == 0 && candidates == 0 {
            notes.insert(
                0,
                Note {
                    inst: None,
                    message: format!(
                        "num_stages = {} pipelines nothing: no loop loads tiles whose only uses \
                         are tensor-core dots",
                        self.num_stages
                    ),
                },
            );
        }
        notes
    }

    /// The decisions about one instruction, as printed after it by [`Annotations`].
    fn describe(&self, inst: &Inst, pipelined: &HashMap<Value, String>) -> Vec<String> {
        let mut facts = vec![];
        if let Some(&r) = inst.results.first() {
            let ty = self.k.ty(r);
            if !matches!(inst.op, Op::For { .. } | Op::If { .. }) && !ty.is_scalar() {
                facts.push(layout_text(&self.layout(r)));
            }
        }
        match &inst.op {
            Op::Load { .. } | Op::Store { .. } | Op::AtomicAdd { .. } => {
                if let Some(p) = inst.results.first().and_then(|r| pipelined.get(r)) {
                    facts.push(p.clone());
                } else if let Some((l, w)) = self.memory_access(inst) {
                    if !matches!(inst.op, Op::Load { .. })
                        && !self.k.ty(inst.op.operands()[0]).is_scalar()
                    {
                        facts.push(layout_text(&l));
                    }
                    facts.push(match w.limit {
                        Some(_) => format!("width {} of {}", w.width, w.most),
                        None => format!("width {}", w.width),
                    });
                }
            }
            Op::Dot { a, b, .. } => facts.push(match self.dot_path(*a, *b, inst.results[0]) {
                DotPath::Fma(_) => "fma loop".to_string(),
                DotPath::MmaSync { a_in_registers } => {
                    format!(
                        "mma.sync{}",
                        if a_in_registers {
                            ", a in registers"
                        } else {
                            ""
                        }
                    )
                }
                DotPath::Wgmma { a_in_registers } => {
                    format!(
                        "wgmma{}",
                        if a_in_registers {
                            ", a in registers"
                        } else {
                            ""
                        }
                    )
                }
            }),
            Op::Trans(_) if self.assign.is_free_trans(inst.results[0]) => {
                facts.push("free: read by ldmatrix.trans".into());
            }
            Op::For { body, .. } => {
                if let Some(plan) = self.pipeline_report(body).plan {
                    facts.push(plan.describe());
                }
            }
            _ => {}
        }
        facts
    }
}

/// A layout as `--emit layouts` prints it.
fn layout_text(l: &Layout) -> String {
    match l {
        Layout::Blocked(b) if b.replicated() => {
            format!("blocked(replicated {} of {} threads)", b.numel, b.threads)
        }
        Layout::Blocked(b) => format!("blocked(vec {}, regs {})", b.vec, b.regs),
        Layout::Mma(m) => format!(
            "mma(warps {}x{}, atoms {}x{}, regs {})",
            m.warps_m,
            m.warps_n,
            m.atoms_m(),
            m.atoms_n(),
            m.regs()
        ),
        Layout::Rows(r) => format!("rows(warps {}, regs {})", r.warps_m, r.regs()),
    }
}

/// The decisions about each instruction of a kernel, as `--emit layouts` prints them.
pub struct Annotations<'a> {
    d: Decisions<'a>,
    pipelined: HashMap<Value, String>,
    notes: Vec<Note<'a>>,
    header: String,
}

impl<'a> Annotations<'a> {
    pub fn new(k: &'a Kernel, opts: &PtxOptions) -> Annotations<'a> {
        let d = Decisions::new(k, opts);
        let mut pipelined = HashMap::new();
        for (_, inst) in d.du.insts() {
            if let Op::For { body, .. } = &inst.op {
                if let Some(plan) = d.pipeline_report(body).plan {
                    pipelined.extend(plan.piped_loads());
                }
            }
        }
        let notes = d.notes();
        let header = format!(
            "nvptx {}, {} warps, num_stages {}{}",
            opts.arch.name(),
            opts.num_warps,
            opts.num_stages.max(1),
            if d.aligned { ", aligned" } else { "" }
        );
        Annotations {
            d,
            pipelined,
            notes,
            header,
        }
    }

    /// The target and options, in a few words.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The notes about the kernel as a whole.
    pub fn kernel_notes(&self) -> impl Iterator<Item = &str> {
        self.notes
            .iter()
            .filter(|n| n.inst.is_none())
            .map(|n| n.message.as_str())
    }

    /// What was decided about `inst`, if anything: its result's layout, its memory accesses,
    /// its `dot` path, its loop pipeline.
    pub fn facts(&self, inst: &Inst) -> Option<String> {
        let facts = self.d.describe(inst, &self.pipelined);
        (!facts.is_empty()).then(|| facts.join(", "))
    }

    /// The notes about `inst`.
    pub fn notes<'s>(&'s self, inst: &'s Inst) -> impl Iterator<Item = &'s str> + 's {
        self.notes
            .iter()
            .filter(move |n| n.inst.is_some_and(|i| std::ptr::eq(i, inst)))
            .map(|n| n.message.as_str())
    }
}

/// The notes of [`Decisions::notes`], rendered one a line with the value names of the IR
/// text form (`kiln compile -v`).
pub fn render_notes(k: &Kernel, opts: &PtxOptions) -> Vec<String> {
    let d = Decisions::new(k, opts);
    let names = ir::value_names(k);
    let name = |v: &Value| names.get(v).cloned().unwrap_or_else(|| format!("v{}", v.0));
    d.notes()
        .into_iter()
        .map(|n| {
            let at = match n.inst {
                Some(Inst { results, .. }) if !results.is_empty() => {
                    format!(", {}", name(&results[0]))
                }
                Some(Inst {
                    op: Op::Store { ptr, .. },
                    ..
                }) => format!(", the store through {}", name(ptr)),
                _ => String::new(),
            };
            format!("kernel `{}`{at}: {}", k.name, n.message)
        })
        .collect()
}

/// Values that are constant positive zeros.
fn zero_constants(du: &DefUse<'_>) -> HashSet<Value> {
    du.insts()
        .filter(|(_, inst)| match inst.op {
            Op::Const(ConstValue::Int(0)) | Op::Const(ConstValue::Bool(false)) => true,
            Op::Const(ConstValue::Float(f)) => f == 0.0 && f.is_sign_positive(),
            _ => false,
        })
        .flat_map(|(_, inst)| inst.results.iter().copied())
        .collect()
}
