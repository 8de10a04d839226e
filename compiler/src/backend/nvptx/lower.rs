//! The walk over the IR: one LLVM function per kernel, one LLVM value per register of each tile,
//! structured control flow as LLVM blocks and phis.

use super::bounds::Checks;
use super::decisions::Decisions;
use super::layout::{Blocked, Layout, TidTerm};
use super::{error, intrinsics, Arch, PtxOptions, MAX_STAGES, MAX_TILE_REGS};
use crate::backend::BackendError;
use crate::ir::{Block, ConstValue, DefUse, Elem, Inst, Kernel, Op, ParamKind, Value};
use crate::types::DType;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicTypeEnum;
use inkwell::values::{
    BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, ValueKind,
};
use inkwell::AddressSpace;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

/// The registers of one tile in this thread, in [`Layout`] order.
pub type Regs<'ctx> = Vec<BasicValueEnum<'ctx>>;

/// A lowering failure (a bug or an unsupported construct, never a user error).
#[derive(Debug)]
pub struct LowerError(pub String);

impl From<BuilderError> for LowerError {
    fn from(e: BuilderError) -> Self {
        LowerError(format!("LLVM builder: {e}"))
    }
}

impl From<String> for LowerError {
    fn from(e: String) -> Self {
        LowerError(e)
    }
}

pub type Res<T> = Result<T, LowerError>;

/// A kernel lowered to an (unoptimised) LLVM module.
pub struct Built<'ctx> {
    pub module: Module<'ctx>,
    pub shared_bytes: u32,
}

/// Lowers `k` to an LLVM module for the NVPTX target.
pub fn build_module<'ctx>(
    ctx: &'ctx Context,
    k: &Kernel,
    opts: &PtxOptions,
) -> Result<Built<'ctx>, BackendError> {
    check_options(opts).map_err(|m| error(k, m))?;
    let module = ctx.create_module(&k.name);
    let mut l = Lowerer::new(ctx, module, k, opts).map_err(|e| error(k, e.0))?;
    l.check_tile_registers().map_err(|m| error(k, m))?;
    l.kernel_body().map_err(|e| error(k, e.0))?;
    // The rings start where a tensor-core operand tile may.
    let scratch = match l.pipe_bytes.get() {
        0 => super::shared::align16(l.shared_bytes.get()),
        _ => super::shared::align_tile(l.shared_bytes.get()),
    };
    let limit = opts.arch.max_shared_bytes();
    let total = u64::from(scratch) + u64::from(l.pipe_bytes.get());
    let shared_bytes = match u32::try_from(total) {
        Ok(bytes) if bytes <= limit => bytes,
        _ => {
            return Err(error(
                k,
                format!(
                    "needs {total} bytes of shared memory ({scratch} scratch, {} for the \
                     loop pipeline), more than the {limit} a block may have on {}; use fewer \
                     stages or smaller tiles",
                    l.pipe_bytes.get(),
                    opts.arch.name()
                ),
            ))
        }
    };
    l.size_shared(scratch);
    Ok(Built {
        module: l.module,
        shared_bytes,
    })
}

/// Refuses options no kernel can be compiled with.
fn check_options(opts: &PtxOptions) -> Result<(), String> {
    if !opts.num_warps.is_power_of_two() || opts.num_warps > 32 {
        return Err(format!(
            "num_warps must be a power of two from 1 to 32, not {}",
            opts.num_warps
        ));
    }
    if opts.num_stages > MAX_STAGES {
        return Err(format!(
            "num_stages must be at most {MAX_STAGES}, not {} (each stage keeps one more \
             iteration's tiles in shared memory)",
            opts.num_stages
        ));
    }
    Ok(())
}

pub(super) struct Lowerer<'a, 'ctx> {
    pub ctx: &'ctx Context,
    pub module: Module<'ctx>,
    pub b: Builder<'ctx>,
    pub func: FunctionValue<'ctx>,
    pub k: &'a Kernel,
    /// What the lowering does with each value, decided before any code is emitted.
    pub d: Decisions<'a>,
    pub threads: u32,
    /// `%tid.x`, an i32.
    pub tid: IntValue<'ctx>,
    /// The block's shared scratch buffer (address space 3), free between conversions. A
    /// placeholder while the kernel is lowered: [`Lowerer::size_shared`] replaces it with a
    /// buffer of the size the conversions claimed.
    pub smem: PointerValue<'ctx>,
    /// The most bytes of `smem` any conversion claimed so far.
    shared_bytes: Cell<u32>,
    /// The rings of pipelined loops (see `pipeline`), after the scratch buffer. A placeholder
    /// while the kernel is lowered, like `smem`.
    pub pipe: PointerValue<'ctx>,
    /// Bytes of `pipe` the pipelined loops claimed so far.
    pub pipe_bytes: Cell<u32>,
    /// Loads the current loop pipeline copies to shared memory: where this iteration's copy is.
    pub piped: HashMap<Value, (PointerValue<'ctx>, super::mma::SharedTile)>,
    /// The target (its shared-memory limit bounds the pipeline rings).
    pub arch: Arch,
    /// Dots whose `wgmma`s stay in flight at the end of their loop's iteration (see
    /// `pipeline`).
    pub in_flight: HashSet<Value>,
    /// The bounds checks of a checked kernel ([`PtxOptions::bounds_checks`]).
    pub checks: Option<Checks<'ctx>>,
    /// Tensor-core dots may run as `wgmma` (see `wgmma`, `Assignment::warpgroups`).
    pub wgmma: bool,
    vals: HashMap<Value, Regs<'ctx>>,
}

impl<'a, 'ctx> Lowerer<'a, 'ctx> {
    fn new(
        ctx: &'ctx Context,
        module: Module<'ctx>,
        k: &'a Kernel,
        opts: &PtxOptions,
    ) -> Res<Self> {
        let mut params: Vec<_> = k
            .params
            .iter()
            .map(|p| match p.kind {
                ParamKind::Ptr { .. } => ctx.ptr_type(AddressSpace::from(1)).into(),
                ParamKind::Scalar(d) => scalar_type(ctx, d).into(),
            })
            .collect();
        if opts.bounds_checks {
            params.extend(super::bounds::extra_params(ctx));
        }
        let func = module.add_function(&k.name, ctx.void_type().fn_type(&params, false), None);
        func.set_call_conventions(71); // ptx_kernel
        let threads = 32 * opts.num_warps;
        let annotation = ctx.metadata_node(&[
            func.as_global_value().as_pointer_value().into(),
            ctx.metadata_string("maxntidx").into(),
            ctx.i32_type().const_int(threads as u64, false).into(),
        ]);
        module
            .add_global_metadata("nvvm.annotations", &annotation)
            .map_err(|e| LowerError(e.to_string()))?;
        let smem = placeholder(ctx, &module, "kiln_smem_placeholder");
        let pipe = placeholder(ctx, &module, "kiln_pipe_placeholder");
        let b = ctx.create_builder();
        b.position_at_end(ctx.append_basic_block(func, "entry"));
        let tid_fn = intrinsics::declare(&module, "llvm.nvvm.read.ptx.sreg.tid.x", &[])?;
        let tid = b.build_call(tid_fn, &[], "tid")?.try_as_basic_value();
        let ValueKind::Basic(tid) = tid else {
            return Err(LowerError("tid.x has no value".into()));
        };
        let tid = tid.into_int_value();
        let checks = match opts.bounds_checks {
            true => Some(Checks::new(ctx, &b, func, k)?),
            false => None,
        };
        let d = Decisions::new(k, opts);
        Ok(Lowerer {
            ctx,
            b,
            func,
            k,
            wgmma: d.wgmma,
            d,
            threads,
            tid,
            smem,
            shared_bytes: Cell::new(0),
            pipe,
            pipe_bytes: Cell::new(0),
            piped: HashMap::new(),
            arch: opts.arch,
            in_flight: HashSet::new(),
            checks,
            vals: HashMap::new(),
            module,
        })
    }

    /// Refuses a kernel with a tile that needs more than [`MAX_TILE_REGS`] registers per
    /// thread in its layout, before anything is unrolled.
    fn check_tile_registers(&self) -> Result<(), String> {
        let biggest = (0..self.k.values.len() as u32)
            .map(Value)
            .map(|v| (self.layout(v).regs(), v))
            .max_by_key(|&(regs, v)| (regs, std::cmp::Reverse(v.0)));
        match biggest {
            Some((regs, v)) if regs > MAX_TILE_REGS => Err(format!(
                "the {} tile v{} needs {regs} registers per thread over {} threads, more than \
                 the {MAX_TILE_REGS} one tile may have (a thread has at most 255: larger tiles \
                 spill, and their unrolled code takes minutes to compile); use more warps or \
                 smaller tiles",
                self.k.ty(v),
                v.0,
                self.threads
            )),
            _ => Ok(()),
        }
    }

    fn kernel_body(&mut self) -> Res<()> {
        for (i, &v) in self.k.body.args.iter().enumerate() {
            let p = self
                .func
                .get_nth_param(i as u32)
                .ok_or_else(|| LowerError("missing parameter".into()))?;
            self.vals.insert(v, vec![p]);
        }
        if self.block(&self.k.body)?.is_some() {
            return Err(LowerError("yield at the kernel's top level".into()));
        }
        self.b.build_return(None)?;
        Ok(())
    }

    /// Notes that a conversion uses the first `bytes` of the shared buffer.
    pub fn claim_shared(&self, bytes: u32) {
        self.shared_bytes.set(self.shared_bytes.get().max(bytes));
    }

    /// Replaces the placeholders with the block's dynamic shared memory: the scratch buffer
    /// (`scratch` bytes) first, then the pipeline rings.
    fn size_shared(&self, scratch: u32) {
        let smem = dynamic_shared_buffer(self.ctx, &self.module, "kiln_smem");
        // SAFETY: a constant offset within the launch's dynamic shared memory, which is sized
        // to the scratch buffer plus the rings.
        let pipe =
            unsafe { smem.const_in_bounds_gep(self.ctx.i8_type(), &[self.i32(scratch as u64)]) };
        self.smem.replace_all_uses_with(smem);
        self.pipe.replace_all_uses_with(pipe);
        for name in ["kiln_smem_placeholder", "kiln_pipe_placeholder"] {
            if let Some(placeholder) = self.module.get_global(name) {
                // SAFETY: it has no uses left.
                unsafe { placeholder.delete() };
            }
        }
    }

    /// The layout of value `v`.
    pub fn layout(&self, v: Value) -> Layout {
        self.d.layout(v)
    }

    /// The blocked layout of a tile shaped like `v`.
    pub fn blocked(&self, v: Value) -> Blocked {
        Blocked::new(self.k.ty(v).numel() as u32, self.threads)
    }

    /// The element dtype of `v` (pointers have none).
    pub fn dtype(&self, v: Value) -> Res<DType> {
        self.k
            .ty(v)
            .dtype()
            .ok_or_else(|| LowerError(format!("v{} is a pointer here", v.0)))
    }

    pub fn regs(&self, v: Value) -> Res<Regs<'ctx>> {
        self.vals
            .get(&v)
            .cloned()
            .ok_or_else(|| LowerError(format!("v{} used before it is lowered", v.0)))
    }

    /// The registers of `v` in layout `to`: its own if it is laid out so, else recomputed for
    /// each register of `to` (see `remat`) or moved through shared memory.
    pub fn regs_as(&self, v: Value, to: &Layout) -> Res<Regs<'ctx>> {
        if self.layout(v) == *to {
            return self.regs(v);
        }
        if self.k.ty(v).numel() == 1 {
            return Ok(vec![self.scalar(v)?; to.regs() as usize]);
        }
        if super::remat::rematerialisable(self.k, self.du(), v) {
            return (0..to.regs())
                .map(|r| self.remat_at(v, self.flat_index(to, r)?))
                .collect();
        }
        self.convert(v, to)
    }

    /// The single register of a scalar.
    pub fn scalar(&self, v: Value) -> Res<BasicValueEnum<'ctx>> {
        Ok(self.regs(v)?[0])
    }

    /// Calls an intrinsic and returns its value.
    pub fn call(
        &self,
        name: &str,
        types: &[BasicTypeEnum<'ctx>],
        args: &[BasicValueEnum<'ctx>],
    ) -> Res<BasicValueEnum<'ctx>> {
        let f = intrinsics::declare(&self.module, name, types)?;
        let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
        match self.b.build_call(f, &args, "")?.try_as_basic_value() {
            ValueKind::Basic(v) => Ok(v),
            ValueKind::Instruction(_) => Err(LowerError(format!("{name} returns nothing"))),
        }
    }

    /// Calls an intrinsic for its effect.
    pub fn call_void(&self, name: &str, args: &[BasicValueEnum<'ctx>]) -> Res<()> {
        let f = intrinsics::declare(&self.module, name, &[])?;
        let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
        self.b.build_call(f, &args, "")?;
        Ok(())
    }

    pub fn i32(&self, v: u64) -> IntValue<'ctx> {
        self.ctx.i32_type().const_int(v, false)
    }

    /// The LLVM type of a register holding an element of `e`.
    pub fn reg_type(&self, e: Elem) -> BasicTypeEnum<'ctx> {
        match e {
            Elem::Ptr(_) => self.ctx.ptr_type(AddressSpace::from(1)).into(),
            Elem::Scalar(d) => scalar_type(self.ctx, d),
        }
    }

    /// The flat element index held in register `reg` of a tile laid out as `l` (an i32).
    pub fn flat_index(&self, l: &Layout, reg: u32) -> Res<IntValue<'ctx>> {
        let base = self.tid_part(l)?;
        Ok(self
            .b
            .build_int_add(base, self.i32(l.reg_offset(reg) as u64), "")?)
    }

    /// The thread's part of every flat index of layout `l` (see [`super::layout`]).
    fn tid_part(&self, l: &Layout) -> Res<IntValue<'ctx>> {
        let mut sum: Option<IntValue<'ctx>> = None;
        for t in l.tid_terms() {
            if t.mask == 0 {
                continue;
            }
            // `tid < threads`, so masking with `threads - 1` is a no-op.
            let term = if t.shift == 0 && t.mask == self.threads - 1 {
                self.b.build_int_mul(self.tid, self.i32(t.mul as u64), "")?
            } else {
                self.bit_field(self.tid, &t)?
            };
            sum = Some(match sum {
                None => term,
                Some(s) => self.b.build_int_add(s, term, "")?,
            });
        }
        Ok(sum.unwrap_or_else(|| self.i32(0)))
    }

    /// `(x >> shift & mask) * mul` for term `t` (zero when the mask is).
    pub fn bit_field(&self, x: IntValue<'ctx>, t: &TidTerm) -> Res<IntValue<'ctx>> {
        if t.mask == 0 {
            return Ok(self.i32(0));
        }
        let s = self
            .b
            .build_right_shift(x, self.i32(t.shift as u64), false, "")?;
        let f = self.b.build_and(s, self.i32(t.mask as u64), "")?;
        Ok(self.b.build_int_mul(f, self.i32(t.mul as u64), "")?)
    }

    /// Whether this thread owns its registers of a tile laid out as `l` (None: every thread
    /// does). Only owners store elements or add them to sums.
    pub fn owner(&self, l: &Layout) -> Res<Option<IntValue<'ctx>>> {
        if let Layout::Rows(r) = l {
            let lane_t = self.b.build_and(self.tid, self.i32(3), "")?;
            let first =
                self.b
                    .build_int_compare(inkwell::IntPredicate::EQ, lane_t, self.i32(0), "")?;
            let in_warps = self.b.build_int_compare(
                inkwell::IntPredicate::ULT,
                self.tid,
                self.i32(32 * r.warps_m as u64),
                "",
            )?;
            return Ok(Some(self.b.build_and(first, in_warps, "owner")?));
        }
        if l.owners() >= self.threads {
            return Ok(None);
        }
        Ok(Some(self.b.build_int_compare(
            inkwell::IntPredicate::ULT,
            self.tid,
            self.i32(l.owners() as u64),
            "owner",
        )?))
    }

    /// `__syncthreads()`.
    pub fn barrier(&self) -> Res<()> {
        self.call_void("llvm.nvvm.barrier0", &[])
    }

    /// Lowers a block; returns the values it yields, if it ends in a yield.
    pub(super) fn block(&mut self, b: &Block) -> Res<Option<Vec<Value>>> {
        for inst in &b.insts {
            if let Op::Yield(vs) = &inst.op {
                return Ok(Some(vs.clone()));
            }
            self.inst(inst)?;
        }
        Ok(None)
    }

    pub(super) fn define(&mut self, v: Value, regs: Regs<'ctx>) {
        self.vals.insert(v, regs);
    }

    pub(super) fn inst(&mut self, inst: &Inst) -> Res<()> {
        match &inst.op {
            // Copied to shared memory by the loop pipeline; its dots read it there.
            Op::Load { .. } if self.piped.contains_key(&inst.results[0]) => {
                self.define(inst.results[0], vec![]);
                Ok(())
            }
            Op::For {
                lo,
                hi,
                step,
                init,
                body,
            } => self.for_loop(*lo, *hi, *step, init, body, &inst.results),
            Op::If {
                cond,
                then_block,
                else_block,
            } => self.if_else(*cond, then_block, else_block, &inst.results),
            Op::Store { ptr, value, mask } => self.store(*ptr, *value, *mask, false),
            Op::AtomicAdd { ptr, value, mask } => self.store(*ptr, *value, *mask, true),
            Op::Yield(_) => Err(LowerError("yield in the middle of a block".into())),
            op => {
                let r = *inst
                    .results
                    .first()
                    .ok_or_else(|| LowerError(format!("{op:?} has no result")))?;
                let regs = self.value_op(op, r)?;
                self.define(r, regs);
                Ok(())
            }
        }
    }

    /// The registers of `r`, the result of an op that computes one tile.
    fn value_op(&mut self, op: &Op, r: Value) -> Res<Regs<'ctx>> {
        let lr = self.layout(r);
        // Operands of elementwise ops, in the result's layout.
        let regs = |v: &Value| self.regs_as(*v, &lr);
        Ok(match op {
            Op::Const(c) => {
                let ty = self.k.ty(r);
                let c = self.constant(*c, ty.elem)?;
                vec![c; lr.regs() as usize]
            }
            Op::ProgramId(a) => vec![self.sreg("ctaid", *a)?],
            Op::NumPrograms(a) => vec![self.sreg("nctaid", *a)?],
            Op::Range(_) => (0..lr.regs())
                .map(|i| self.flat_index(&lr, i).map(|v| v.as_basic_value_enum()))
                .collect::<Res<_>>()?,
            Op::Splat(v) => vec![self.scalar(*v)?; lr.regs() as usize],
            // Blocked and row layouts ignore the shape.
            Op::Reshape(v) => match (self.layout(*v), lr) {
                (Layout::Rows(a), Layout::Rows(b)) if a == b => self.regs(*v)?,
                (_, Layout::Rows(_)) => self.regs_as(*v, &lr)?,
                _ => self.regs_as(*v, &Layout::Blocked(self.blocked(*v)))?,
            },
            Op::Broadcast(v) => self.broadcast(*v, r)?,
            Op::Trans(_) if self.d.assign.is_free_trans(r) => vec![],
            Op::Trans(v) => self.transpose(*v, r)?,
            Op::Unary(op, v) => {
                let d = self.dtype(*v)?;
                regs(v)?
                    .into_iter()
                    .map(|x| self.unary(*op, x, d))
                    .collect::<Res<_>>()?
            }
            Op::Binary(op, a, b) => {
                let d = self.dtype(*a)?;
                regs(a)?
                    .into_iter()
                    .zip(regs(b)?)
                    .map(|(x, y)| self.binary(*op, x, y, d))
                    .collect::<Res<_>>()?
            }
            Op::Cmp(pred, a, b) => {
                let d = self.dtype(*a)?;
                regs(a)?
                    .into_iter()
                    .zip(regs(b)?)
                    .map(|(x, y)| self.compare(*pred, x, y, d))
                    .collect::<Res<_>>()?
            }
            Op::Select(c, a, b) => {
                let (rc, ra, rb) = (regs(c)?, regs(a)?, regs(b)?);
                let mut v = Vec::with_capacity(rc.len());
                for ((c, x), y) in rc.into_iter().zip(ra).zip(rb) {
                    v.push(self.b.build_select(c.into_int_value(), x, y, "")?);
                }
                v
            }
            Op::Fma(a, b, c) => {
                let d = self.dtype(*a)?;
                let (ra, rb, rc) = (regs(a)?, regs(b)?, regs(c)?);
                let mut v = Vec::with_capacity(ra.len());
                for ((x, y), z) in ra.into_iter().zip(rb).zip(rc) {
                    v.push(self.fma(x, y, z, d)?);
                }
                v
            }
            Op::Cast(v) => {
                let from = self.dtype(*v)?;
                let to = self.dtype(r)?;
                regs(v)?
                    .into_iter()
                    .map(|x| self.cast(x, from, to))
                    .collect::<Res<_>>()?
            }
            Op::PtrAdd(p, o) => regs(p)?
                .into_iter()
                .zip(regs(o)?)
                .map(|(x, y)| self.ptr_add(*p, x, y))
                .collect::<Res<_>>()?,
            Op::Load { ptr, mask, other } => self.load(*ptr, *mask, *other, r)?,
            Op::Reduce { op, value, axis } => self.reduce(*op, *value, *axis, r)?,
            Op::Dot { a, b, acc } => self.dot(*a, *b, *acc, r)?,
            Op::For { .. }
            | Op::If { .. }
            | Op::Store { .. }
            | Op::AtomicAdd { .. }
            | Op::Yield(_) => return Err(LowerError(format!("{op:?} computes no tile"))),
        })
    }

    /// `p + o` for one register of pointer tile `ptr` (offsets count elements).
    pub fn ptr_add(
        &self,
        ptr: Value,
        p: BasicValueEnum<'ctx>,
        o: BasicValueEnum<'ctx>,
    ) -> Res<BasicValueEnum<'ctx>> {
        let d = self
            .k
            .ty(ptr)
            .elem
            .pointee()
            .ok_or_else(|| LowerError("ptr_add on a non-pointer".into()))?;
        // SAFETY: plain address arithmetic; nothing is dereferenced here.
        let q = unsafe {
            self.b.build_gep(
                memory_type(self.ctx, d),
                p.into_pointer_value(),
                &[o.into_int_value()],
                "",
            )?
        };
        Ok(q.as_basic_value_enum())
    }

    /// The op that defines `v`, if an instruction does (not a block argument).
    pub fn def(&self, v: Value) -> Option<&'a Op> {
        self.d.def(v)
    }

    /// The definitions and uses of the kernel's values.
    pub fn du(&self) -> &DefUse<'a> {
        &self.d.du
    }

    pub(super) fn sreg(&self, name: &str, axis: u8) -> Res<BasicValueEnum<'ctx>> {
        let a = ["x", "y", "z"]
            .get(axis as usize)
            .ok_or_else(|| LowerError(format!("grid axis {axis}")))?;
        self.call(&format!("llvm.nvvm.read.ptx.sreg.{name}.{a}"), &[], &[])
    }

    /// A constant of element type `e`.
    pub fn constant(&self, c: ConstValue, e: Elem) -> Res<BasicValueEnum<'ctx>> {
        let ty = self.reg_type(e);
        Ok(match (e, c) {
            (Elem::Scalar(d), ConstValue::Int(i)) if !d.is_float() => {
                ty.into_int_type().const_int(i as u64, true).into()
            }
            (Elem::Scalar(d), ConstValue::Bool(v)) if !d.is_float() => {
                ty.into_int_type().const_int(v as u64, false).into()
            }
            (Elem::Scalar(d), ConstValue::Float(f)) if d.is_float() => {
                ty.into_float_type().const_float(f).into()
            }
            (Elem::Scalar(d), ConstValue::Int(i)) if d.is_float() => {
                ty.into_float_type().const_float(i as f64).into()
            }
            _ => return Err(LowerError(format!("constant {c} of type {e}"))),
        })
    }

    pub fn current_block(&self) -> Res<inkwell::basic_block::BasicBlock<'ctx>> {
        self.b
            .get_insert_block()
            .ok_or_else(|| LowerError("builder has no block".into()))
    }
}

/// A shared-memory global that stands for a buffer until the kernel is lowered.
fn placeholder<'ctx>(ctx: &'ctx Context, module: &Module<'ctx>, name: &str) -> PointerValue<'ctx> {
    let ty = ctx.i8_type().array_type(0);
    let g = module.add_global(ty, Some(AddressSpace::from(3)), name);
    g.set_linkage(Linkage::Internal);
    g.set_initializer(&ty.get_undef());
    g.as_pointer_value()
}

/// The block's dynamic shared memory (`.extern .shared .align 16 .b8 name[]`), whose size the
/// launch gives ([`super::PtxKernel::shared_bytes`]).
fn dynamic_shared_buffer<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    name: &str,
) -> PointerValue<'ctx> {
    let ty = ctx.i8_type().array_type(0);
    let g = module.add_global(ty, Some(AddressSpace::from(3)), name);
    g.set_linkage(Linkage::External);
    g.set_alignment(super::mma::SharedTile::ALIGN);
    g.as_pointer_value()
}

/// The LLVM type of a register of dtype `d` (`bool` is `i1`).
pub fn scalar_type(ctx: &Context, d: DType) -> BasicTypeEnum<'_> {
    match d {
        DType::Bool => ctx.bool_type().into(),
        DType::I32 => ctx.i32_type().into(),
        DType::I64 => ctx.i64_type().into(),
        DType::F16 => ctx.f16_type().into(),
        DType::Bf16 => ctx.bf16_type().into(),
        DType::F32 => ctx.f32_type().into(),
    }
}

/// The LLVM type of dtype `d` in memory (`bool` is a byte).
pub fn memory_type(ctx: &Context, d: DType) -> BasicTypeEnum<'_> {
    match d {
        DType::Bool => ctx.i8_type().into(),
        _ => scalar_type(ctx, d),
    }
}
