//! Element access: the value of element `i` (row-major, an `i64`) of any tile, read from its
//! slot or computed from its definition for virtual tiles, and the loops that walk tiles.

use super::lanes::LANES;
use super::lower::{cl_type, Lowerer, Res};
use crate::ir::{Op, Value};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, BlockArg, InstBuilder, MemFlagsData, StackSlot, Type as ClType, Value as ClValue,
};

impl Lowerer<'_, '_> {
    /// Element `i` of `v`.
    pub(super) fn elem(&mut self, v: Value, i: ClValue) -> Res<ClValue> {
        if let Some(&s) = self.scalars.get(&v) {
            return Ok(s);
        }
        if let Some(&slot) = self.slots.get(&v) {
            return Ok(self.slot_load(slot, cl_type(self.k.ty(v).elem), i));
        }
        if self.facts.is_virtual(v) {
            let op = self
                .facts
                .du
                .def_op(v)
                .ok_or("virtual value without a definition")?;
            return self.op_elem(op, v, i);
        }
        Err(format!("value v{} used before it is defined", v.0))
    }

    /// A scalar, or element 0 of a one-element tile.
    pub(super) fn elem_scalar(&mut self, v: Value) -> Res<ClValue> {
        let zero = self.b.ins().iconst(types::I64, 0);
        self.elem(v, zero)
    }

    /// Element `i` of the result `r` of an elementwise or shape op.
    pub(super) fn op_elem(&mut self, op: &Op, r: Value, i: ClValue) -> Res<ClValue> {
        let rty = self.k.ty(r).clone();
        Ok(match op {
            Op::Const(c) => self.constant(*c, rty.elem)?,
            Op::Range(_) => self.b.ins().ireduce(types::I32, i),
            Op::Splat(s) => self.elem_scalar(*s)?,
            Op::Reshape(x) => self.elem(*x, i)?,
            Op::Broadcast(x) => {
                let src = self.k.ty(*x).shape.clone();
                let j = self.broadcast_index(&src, &rty.shape, i);
                self.elem(*x, j)?
            }
            Op::Trans(x) => {
                // Result [b, a] from source [a, b]: element (p, q) is source (q, p).
                let (a, b) = (rty.shape[1] as i64, rty.shape[0] as i64);
                let p = self.b.ins().ushr_imm_s(i, a.trailing_zeros() as i64);
                let q = self.b.ins().band_imm_s(i, a - 1);
                let j = self.b.ins().imul_imm_s(q, b);
                let j = self.b.ins().iadd(j, p);
                self.elem(*x, j)?
            }
            Op::Unary(u, x) => {
                let d = self.k.ty(*x).dtype().ok_or("unary op on pointers")?;
                let x = self.elem(*x, i)?;
                self.unary(*u, d, x)?
            }
            Op::Binary(o, a, b) => {
                let d = self.k.ty(*a).dtype().ok_or("binary op on pointers")?;
                let a = self.elem(*a, i)?;
                let b = self.elem(*b, i)?;
                self.binary(*o, d, a, b)?
            }
            Op::Cmp(p, a, b) => {
                let d = self.k.ty(*a).dtype().ok_or("comparison of pointers")?;
                let a = self.elem(*a, i)?;
                let b = self.elem(*b, i)?;
                self.cmp(*p, d, a, b)
            }
            Op::Select(c, a, b) => {
                let c = self.elem(*c, i)?;
                let a = self.elem(*a, i)?;
                let b = self.elem(*b, i)?;
                self.b.ins().select(c, a, b)
            }
            Op::Fma(a, b, c) => {
                let d = self.k.ty(*a).dtype().ok_or("fma on pointers")?;
                let a = self.elem(*a, i)?;
                let b = self.elem(*b, i)?;
                let c = self.elem(*c, i)?;
                self.fma(d, a, b, c)
            }
            Op::Cast(x) => {
                let from = self.k.ty(*x).dtype().ok_or("cast of pointers")?;
                let to = rty.dtype().ok_or("cast to pointers")?;
                let x = self.elem(*x, i)?;
                self.cast(from, to, x)
            }
            Op::PtrAdd(p, off) => {
                let size = rty
                    .elem
                    .pointee()
                    .ok_or("ptr_add on a non-pointer")?
                    .size_bytes();
                let p = self.elem(*p, i)?;
                let off = self.elem(*off, i)?;
                let off = if self.b.func.dfg.value_type(off) == types::I64 {
                    off
                } else {
                    self.b.ins().sextend(types::I64, off)
                };
                let bytes = self.b.ins().ishl_imm_s(off, size.trailing_zeros() as i64);
                self.b.ins().iadd(p, bytes)
            }
            Op::Load { ptr, mask, other } => self.load_elem(*ptr, *mask, *other, r, i)?,
            other => return Err(format!("{other:?} is not an elementwise op")),
        })
    }

    /// The source index of broadcasting `src` to `dst` (same rank, power-of-two dimensions).
    pub(super) fn broadcast_index(&mut self, src: &[u32], dst: &[u32], i: ClValue) -> ClValue {
        let mut j: Option<ClValue> = None;
        let mut dst_inner = 1i64;
        let mut src_inner = 1i64;
        for d in (0..dst.len()).rev() {
            if src[d] == dst[d] && dst[d] > 1 {
                let c = self
                    .b
                    .ins()
                    .ushr_imm_s(i, dst_inner.trailing_zeros() as i64);
                let c = self.b.ins().band_imm_s(c, i64::from(dst[d]) - 1);
                let c = self.b.ins().imul_imm_s(c, src_inner);
                j = Some(match j {
                    Some(j) => self.b.ins().iadd(j, c),
                    None => c,
                });
            }
            dst_inner *= i64::from(dst[d]);
            src_inner *= i64::from(src[d]);
        }
        j.unwrap_or_else(|| self.b.ins().iconst(types::I64, 0))
    }

    pub(super) fn slot_addr(&mut self, slot: StackSlot, ty: ClType, i: ClValue) -> ClValue {
        let base = self.b.ins().stack_addr(types::I64, slot, 0);
        let off = self
            .b
            .ins()
            .ishl_imm_s(i, ty.bytes().trailing_zeros() as i64);
        self.b.ins().iadd(base, off)
    }

    pub(super) fn slot_load(&mut self, slot: StackSlot, ty: ClType, i: ClValue) -> ClValue {
        let a = self.slot_addr(slot, ty, i);
        self.b.ins().load(ty, MemFlagsData::trusted(), a, 0)
    }

    pub(super) fn slot_store(&mut self, slot: StackSlot, x: ClValue, i: ClValue) {
        let ty = self.b.func.dfg.value_type(x);
        let a = self.slot_addr(slot, ty, i);
        self.b.ins().store(MemFlagsData::trusted(), x, a, 0);
    }

    /// `for i in (0..n).step_by(LANES) { body(i) }` with `n` a multiple of [`LANES`].
    pub(super) fn group_loop(
        &mut self,
        n: u64,
        body: impl FnOnce(&mut Self, ClValue) -> Res<()>,
    ) -> Res<()> {
        self.counted_loop(n / LANES, |l, g| {
            let i = l.b.ins().imul_imm_s(g, LANES as i64);
            body(l, i)
        })
    }

    /// `for i in 0..n { body(i) }` with `n >= 1`.
    pub(super) fn counted_loop(
        &mut self,
        n: u64,
        body: impl FnOnce(&mut Self, ClValue) -> Res<()>,
    ) -> Res<()> {
        self.fold_loop(n, &[], |l, i, _| body(l, i).map(|()| vec![]))?;
        Ok(())
    }

    /// `for i in 0..n` threading accumulators through `body`; returns their final values.
    pub(super) fn fold_loop(
        &mut self,
        n: u64,
        init: &[ClValue],
        body: impl FnOnce(&mut Self, ClValue, &[ClValue]) -> Res<Vec<ClValue>>,
    ) -> Res<Vec<ClValue>> {
        if n <= 1 {
            let zero = self.b.ins().iconst(types::I64, 0);
            return body(self, zero, init);
        }
        let blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(blk, types::I64);
        for &v in init {
            let ty = self.b.func.dfg.value_type(v);
            self.b.append_block_param(blk, ty);
            self.b.append_block_param(exit, ty);
        }
        let zero = self.b.ins().iconst(types::I64, 0);
        let mut args = vec![BlockArg::from(zero)];
        args.extend(init.iter().map(|&v| BlockArg::from(v)));
        self.b.ins().jump(blk, &args);

        self.b.switch_to_block(blk);
        let params = self.b.block_params(blk).to_vec();
        let next = body(self, params[0], &params[1..])?;
        let i = self.b.ins().iadd_imm_s(params[0], 1);
        let more = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedLessThan, i, n as i64);
        let mut again = vec![BlockArg::from(i)];
        again.extend(next.iter().map(|&v| BlockArg::from(v)));
        let done: Vec<BlockArg> = next.iter().map(|&v| v.into()).collect();
        self.b.ins().brif(more, blk, &again, exit, &done);
        self.b.switch_to_block(exit);
        Ok(self.b.block_params(exit).to_vec())
    }
}
