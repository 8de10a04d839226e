//! The translator's state and the kernel-level structure: entry, parameters, blocks, `for` and
//! `if`. Element computations are in `elem`, op semantics in `scalar`, memory in `memory`,
//! reductions in `reduce`, `dot` in `tile_dot`.

use super::bounds::Bounds;
use super::lanes::LanePlan;
use super::lanes::LANES;
use super::math::MathFn;
use crate::ir::{Block, ConstValue, Elem, Inst, Kernel, Op, ParamKind, Provenance, Value};
use crate::types::DType;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, BlockArg, FuncRef, InstBuilder, MemFlagsData, StackSlot, StackSlotData, StackSlotKind,
    Type as ClType, Value as ClValue,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Module};
use std::collections::HashMap;

pub(super) type Res<T> = Result<T, String>;

/// Translates one kernel into the body of a Cranelift function.
pub(super) struct Lowerer<'a, 'f> {
    pub(super) k: &'a Kernel,
    pub(super) b: FunctionBuilder<'f>,
    /// The fusion and lane decisions, and the definitions and uses they were made from.
    pub(super) facts: LanePlan<'a>,
    module: &'a mut JITModule,
    math_ids: &'a HashMap<MathFn, FuncId>,
    math_refs: HashMap<MathFn, FuncRef>,
    dot_id: FuncId,
    dot_ref: Option<FuncRef>,
    /// Scalars, as SSA values.
    pub(super) scalars: HashMap<Value, ClValue>,
    /// Materialised tiles.
    pub(super) slots: HashMap<Value, StackSlot>,
    /// Eight bytes that masked-off lanes read and write instead of user memory.
    pub(super) scratch: Option<StackSlot>,
    /// Total bytes of tile slots in the frame.
    pub(super) frame_bytes: u64,
    pid_ptr: ClValue,
    nprog_ptr: ClValue,
    /// Which parameters each pointer may point into (for bounds checks).
    pub(super) provenance: Provenance,
    /// Address and byte length of every pointer parameter's buffer (`None` for scalars).
    pub(super) bounds: Vec<Option<Bounds>>,
    /// The fault record, when the kernel is compiled with bounds checks.
    pub(super) fault_ptr: Option<ClValue>,
}

/// The most bytes of tile arrays one program's frame may hold. Cranelift addresses stack slots
/// with 32-bit offsets; a runner must also give each thread a stack this large.
pub const MAX_FRAME_BYTES: u64 = 1 << 30;

/// The Cranelift type that carries an element: bool as i8 (0 or 1), 16-bit floats as their bits.
pub(super) fn cl_type(e: Elem) -> ClType {
    match e {
        Elem::Ptr(_) => types::I64,
        Elem::Scalar(d) => match d {
            DType::Bool => types::I8,
            DType::I32 => types::I32,
            DType::I64 => types::I64,
            DType::F16 | DType::Bf16 => types::I16,
            DType::F32 => types::F32,
        },
    }
}

impl<'a, 'f> Lowerer<'a, 'f> {
    /// Emits the whole function: entry block, parameters, body, return.
    pub(super) fn lower_kernel(
        k: &'a Kernel,
        mut b: FunctionBuilder<'f>,
        module: &'a mut JITModule,
        math_ids: &'a HashMap<MathFn, FuncId>,
        dot_id: FuncId,
        bounds_checks: bool,
    ) -> Res<u64> {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let mut l = Lowerer {
            k,
            b,
            facts: LanePlan::new(k),
            module,
            math_ids,
            math_refs: HashMap::new(),
            dot_id,
            dot_ref: None,
            scalars: HashMap::new(),
            slots: HashMap::new(),
            scratch: None,
            frame_bytes: 0,
            pid_ptr: p[2],
            nprog_ptr: p[3],
            provenance: Provenance::of(k)?,
            bounds: vec![],
            fault_ptr: bounds_checks.then_some(p[4]),
        };
        l.params(p[0], p[1])?;
        if l.block(&k.body)?.is_some() {
            return Err("yield at the kernel's top level".into());
        }
        l.b.ins().return_(&[]);
        l.b.seal_all_blocks();
        let frame = l.frame_bytes;
        let config = l.module.target_config();
        l.b.finalize(config);
        Ok(frame)
    }

    fn params(&mut self, args: ClValue, bounds: ClValue) -> Res<()> {
        for (i, (param, &v)) in self.k.params.iter().zip(&self.k.body.args).enumerate() {
            let raw = self
                .b
                .ins()
                .load(types::I64, MemFlagsData::trusted(), args, (8 * i) as i32);
            self.bounds.push(match (param.kind, self.fault_ptr) {
                (ParamKind::Ptr { pointee, .. }, Some(_)) => {
                    let len = self.b.ins().load(
                        types::I64,
                        MemFlagsData::trusted(),
                        bounds,
                        (8 * i) as i32,
                    );
                    // Accesses are one element, or four lanes of them.
                    let size = pointee.size_bytes() as u32;
                    Some(Bounds::new(&mut self.b, raw, len, &[size, 4 * size]))
                }
                _ => None,
            });
            let val = match param.kind {
                ParamKind::Ptr { .. } | ParamKind::Scalar(DType::I64) => raw,
                ParamKind::Scalar(DType::I32) => self.b.ins().ireduce(types::I32, raw),
                ParamKind::Scalar(DType::F32) => {
                    let w = self.b.ins().ireduce(types::I32, raw);
                    self.b.ins().bitcast(types::F32, MemFlagsData::new(), w)
                }
                ParamKind::Scalar(DType::F16 | DType::Bf16) => {
                    self.b.ins().ireduce(types::I16, raw)
                }
                ParamKind::Scalar(DType::Bool) => self.b.ins().icmp_imm_s(IntCC::NotEqual, raw, 0),
            };
            self.scalars.insert(v, val);
        }
        Ok(())
    }

    /// A new stack array for `numel` elements of `ty`.
    pub(super) fn new_slot(&mut self, ty: ClType, numel: u64) -> Res<StackSlot> {
        let bytes = numel * ty.bytes() as u64;
        if self.frame_bytes + bytes > MAX_FRAME_BYTES {
            return Err(format!(
                "the program's tiles need more than {} MiB of memory (the CPU backend's limit); \
                 use smaller tiles",
                MAX_FRAME_BYTES >> 20
            ));
        }
        let size = u32::try_from(bytes).map_err(|_| format!("tile of {bytes} bytes"))?;
        self.frame_bytes += bytes;
        Ok(self
            .b
            .create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, size, 4)))
    }

    /// The slot of a materialised value, created on first request.
    pub(super) fn slot_of(&mut self, v: Value) -> Res<StackSlot> {
        if let Some(&s) = self.slots.get(&v) {
            return Ok(s);
        }
        let ty = self.k.ty(v);
        let s = self.new_slot(cl_type(ty.elem), ty.numel())?;
        self.slots.insert(v, s);
        Ok(s)
    }

    pub(super) fn math(&mut self, f: MathFn) -> FuncRef {
        if let Some(&r) = self.math_refs.get(&f) {
            return r;
        }
        let r = self
            .module
            .declare_func_in_func(self.math_ids[&f], self.b.func);
        self.math_refs.insert(f, r);
        r
    }

    /// The imported tile product (see `tile_dot`).
    pub(super) fn tile_dot_ref(&mut self) -> FuncRef {
        if let Some(r) = self.dot_ref {
            return r;
        }
        let r = self.module.declare_func_in_func(self.dot_id, self.b.func);
        self.dot_ref = Some(r);
        r
    }

    /// Lowers a block's instructions; returns the values of its closing `yield`, if any.
    fn block(&mut self, blk: &'a Block) -> Res<Option<&'a [Value]>> {
        for inst in &blk.insts {
            if let Op::Yield(vs) = &inst.op {
                return Ok(Some(vs));
            }
            self.inst(inst)?;
        }
        Ok(None)
    }

    fn inst(&mut self, inst: &'a Inst) -> Res<()> {
        let result = inst.results.first().copied();
        match &inst.op {
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
            } => self.if_(*cond, then_block, else_block, &inst.results),
            Op::Store { ptr, value, mask } => self.store(*ptr, *value, *mask),
            Op::AtomicAdd { ptr, value, mask } => self.atomic_add(*ptr, *value, *mask),
            Op::Yield(_) => Err("misplaced yield".into()),
            Op::Reduce { op, value, axis } => {
                let r = result.ok_or("reduce without a result")?;
                self.reduce(*op, *value, *axis, r)
            }
            Op::Dot { a, b, acc } => {
                let r = result.ok_or("dot without a result")?;
                self.dot(*a, *b, *acc, r)
            }
            Op::ProgramId(axis) | Op::NumPrograms(axis) => {
                let r = result.ok_or("program_id without a result")?;
                if *axis > 2 {
                    return Err(format!("grid axis {axis}"));
                }
                let base = if matches!(inst.op, Op::ProgramId(_)) {
                    self.pid_ptr
                } else {
                    self.nprog_ptr
                };
                let v = self.b.ins().load(
                    types::I32,
                    MemFlagsData::trusted(),
                    base,
                    4 * i32::from(*axis),
                );
                self.scalars.insert(r, v);
                Ok(())
            }
            op => {
                let r = result.ok_or("elementwise op without a result")?;
                if self.k.ty(r).is_scalar() {
                    let zero = self.b.ins().iconst(types::I64, 0);
                    let v = self.op_elem(op, r, zero)?;
                    self.scalars.insert(r, v);
                } else if !self.facts.is_virtual(r) {
                    let slot = self.slot_of(r)?;
                    self.materialize(r, slot)?;
                }
                Ok(())
            }
        }
    }

    /// Writes every element of `v` (computed from its definition, or read where it lives) into
    /// `slot`.
    pub(super) fn materialize(&mut self, v: Value, slot: StackSlot) -> Res<()> {
        let n = self.k.ty(v).numel();
        let own = self.slots.get(&v) == Some(&slot);
        let op = self.facts.du.def_op(v);
        let form = match op {
            Some(op) if own => self.op_form(op, v),
            _ => self.form(v),
        };
        if n >= LANES && form.is_some() && self.slot_lanes_ok(v) {
            let e = self.k.ty(v).elem;
            return self.group_loop(n, |l, i| {
                let x = match op {
                    Some(op) if own => l.op_group(op, v, i)?,
                    _ => l.group(v, i)?,
                };
                let x = l.lanes_of_group(x, e)?;
                let addr = l.slot_addr(slot, cl_type(e), i);
                l.store_lanes(addr, x, e, MemFlagsData::new().with_notrap());
                Ok(())
            });
        }
        self.counted_loop(n, |l, i| {
            let x = match op {
                Some(op) if own => l.op_elem(op, v, i)?,
                _ => l.elem(v, i)?,
            };
            l.slot_store(slot, x, i);
            Ok(())
        })
    }

    /// Sets each carried value's storage to its new value. Tile sources are first gathered into
    /// slots no destination aliases, so `yield b, a` swaps correctly.
    fn assign_tiles(&mut self, pairs: &[(Value, StackSlot)]) -> Res<()> {
        let dests: Vec<StackSlot> = pairs.iter().map(|p| p.1).collect();
        let mut sources = vec![];
        for &(v, dest) in pairs {
            match self.slots.get(&v).copied() {
                Some(s) if s == dest => sources.push(None),
                Some(s) if !dests.contains(&s) => sources.push(Some(s)),
                _ => {
                    let ty = self.k.ty(v);
                    let tmp = self.new_slot(cl_type(ty.elem), ty.numel())?;
                    self.materialize(v, tmp)?;
                    sources.push(Some(tmp));
                }
            }
        }
        for (&(v, dest), src) in pairs.iter().zip(sources) {
            if let Some(src) = src {
                let ty = cl_type(self.k.ty(v).elem);
                self.counted_loop(self.k.ty(v).numel(), |l, i| {
                    let x = l.slot_load(src, ty, i);
                    l.slot_store(dest, x, i);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    fn scalar(&self, v: Value) -> Res<ClValue> {
        self.scalars
            .get(&v)
            .copied()
            .ok_or_else(|| format!("scalar v{} used before it is defined", v.0))
    }

    /// Whether a loop step is a positive constant (then no run-time guard is needed).
    pub(super) fn step_known_positive(&self, step: Value) -> bool {
        matches!(self.facts.du.def_op(step), Some(Op::Const(ConstValue::Int(s))) if *s > 0)
    }

    fn for_loop(
        &mut self,
        lo: Value,
        hi: Value,
        step: Value,
        init: &[Value],
        body: &'a Block,
        results: &[Value],
    ) -> Res<()> {
        let positive = self.step_known_positive(step);
        let (lo, hi, step) = (self.scalar(lo)?, self.scalar(hi)?, self.scalar(step)?);
        // A step <= 0 runs the body zero times: the loop starts at its end.
        let lo = if positive {
            lo
        } else {
            let forward = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, step, 0);
            self.b.ins().select(forward, lo, hi)
        };
        let iv_ty = self.b.func.dfg.value_type(lo);
        let carried = &body.args[1..];
        let header = self.b.create_block();
        let body_blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, iv_ty);
        let mut scalar_init = vec![BlockArg::from(lo)];
        let mut tile_init = vec![];
        for (&a, &i) in carried.iter().zip(init) {
            let ty = self.k.ty(a);
            if ty.is_scalar() {
                self.b.append_block_param(header, cl_type(ty.elem));
                self.b.append_block_param(exit, cl_type(ty.elem));
                scalar_init.push(self.scalar(i)?.into());
            } else {
                let slot = self.slot_of(a)?;
                tile_init.push((i, slot));
            }
        }
        self.assign_tiles(&tile_init)?;
        self.b.ins().jump(header, &scalar_init);

        self.b.switch_to_block(header);
        let hp = self.b.block_params(header).to_vec();
        let iv = hp[0];
        let mut scalar_state = hp[1..].iter();
        self.scalars.insert(body.args[0], iv);
        for &a in carried {
            if self.k.ty(a).is_scalar() {
                let v = *scalar_state.next().ok_or("carried scalars")?;
                self.scalars.insert(a, v);
            }
        }
        let going = self.b.ins().icmp(IntCC::SignedLessThan, iv, hi);
        let exit_args: Vec<BlockArg> = hp[1..].iter().map(|&v| v.into()).collect();
        self.b.ins().brif(going, body_blk, &[], exit, &exit_args);

        self.b.switch_to_block(body_blk);
        let yields = self.block(body)?.ok_or("for body without yield")?;
        let mut next_scalars = vec![];
        let mut tile_next = vec![];
        for (&a, &y) in carried.iter().zip(yields) {
            if self.k.ty(a).is_scalar() {
                next_scalars.push(self.elem_scalar(y)?);
            } else {
                tile_next.push((y, self.slots[&a]));
            }
        }
        self.assign_tiles(&tile_next)?;
        // The next induction value; stepping past the type's range ends the loop.
        let next = self.b.ins().iadd(iv, step);
        let advanced = self.b.ins().icmp(IntCC::SignedGreaterThan, next, iv);
        let mut header_args = vec![BlockArg::from(next)];
        header_args.extend(next_scalars.iter().map(|&v| BlockArg::from(v)));
        let exit_args: Vec<BlockArg> = next_scalars.iter().map(|&v| v.into()).collect();
        self.b
            .ins()
            .brif(advanced, header, &header_args, exit, &exit_args);

        self.b.switch_to_block(exit);
        let ep = self.b.block_params(exit).to_vec();
        let mut ep = ep.into_iter();
        for (&a, &r) in carried.iter().zip(results) {
            if self.k.ty(a).is_scalar() {
                self.scalars.insert(r, ep.next().ok_or("loop results")?);
            } else {
                // The loop's storage holds the final value and is not written again.
                self.slots.insert(r, self.slots[&a]);
            }
        }
        Ok(())
    }

    fn if_(
        &mut self,
        cond: Value,
        then_block: &'a Block,
        else_block: &'a Block,
        results: &[Value],
    ) -> Res<()> {
        let c = self.scalar(cond)?;
        let then_blk = self.b.create_block();
        let else_blk = self.b.create_block();
        let join = self.b.create_block();
        for &r in results {
            let ty = self.k.ty(r);
            if ty.is_scalar() {
                self.b.append_block_param(join, cl_type(ty.elem));
            } else {
                self.slot_of(r)?;
            }
        }
        self.b.ins().brif(c, then_blk, &[], else_blk, &[]);
        for (blk, body) in [(then_blk, then_block), (else_blk, else_block)] {
            self.b.switch_to_block(blk);
            let yields = self.block(body)?.ok_or("if branch without yield")?;
            let mut args = vec![];
            for (&r, &y) in results.iter().zip(yields) {
                if self.k.ty(r).is_scalar() {
                    args.push(BlockArg::from(self.elem_scalar(y)?));
                } else {
                    // Branch values are defined before the result, so they never alias its slot.
                    let slot = self.slots[&r];
                    self.materialize(y, slot)?;
                }
            }
            self.b.ins().jump(join, &args);
        }
        self.b.switch_to_block(join);
        let jp = self.b.block_params(join).to_vec();
        let mut jp = jp.into_iter();
        for &r in results {
            if self.k.ty(r).is_scalar() {
                self.scalars.insert(r, jp.next().ok_or("if results")?);
            }
        }
        Ok(())
    }

    /// A constant element of type `e`.
    pub(super) fn constant(&mut self, c: ConstValue, e: Elem) -> Res<ClValue> {
        let d = e.dtype().ok_or("pointer constant")?;
        let ins = self.b.ins();
        Ok(match (d, c) {
            (_, ConstValue::DType(t)) => return Err(format!("the type `{t}` used as a constant")),
            (DType::Bool, c) => ins.iconst(
                types::I8,
                i64::from(
                    c != ConstValue::Int(0)
                        && c != ConstValue::Bool(false)
                        && c != ConstValue::Float(0.0),
                ),
            ),
            (DType::I32 | DType::I64, ConstValue::Int(i)) => ins.iconst(cl_type(e), i),
            (DType::I32 | DType::I64, ConstValue::Float(f)) => ins.iconst(cl_type(e), f as i64),
            (DType::I32 | DType::I64, ConstValue::Bool(b)) => ins.iconst(cl_type(e), i64::from(b)),
            (_, c) => {
                let f = match c {
                    ConstValue::Int(i) => i as f32,
                    ConstValue::Float(f) => f as f32,
                    ConstValue::Bool(b) => f32::from(u8::from(b)),
                    ConstValue::DType(t) => {
                        return Err(format!("the type `{t}` used as a constant"))
                    }
                };
                let f = ins.f32const(f);
                self.narrow_f32(d, f)
            }
        })
    }
}
