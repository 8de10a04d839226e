//! Reductions. A reduction to one element (the row reductions of normalisation and softmax
//! kernels) folds each thread's registers, then the warp with butterfly shuffles, then the warps
//! through shared memory; every thread ends with the result. Other reductions stage the tile in
//! shared memory and let each thread fold, sequentially (a loop along the axis), the elements of
//! the outputs it holds.
//!
//! Floating-point sums of `bf16`/`f16` tiles accumulate in `f32` and round once at the end.
//! `argmax` returns the first index of the largest element; a NaN counts as larger than any
//! number (as in PyTorch).

use super::layout::{dim_shifts, Blocked, Layout};
use super::lower::{Lowerer, Res};
use super::shared::REDUCE_BYTES;
use crate::ir::{ReduceOp, Value};
use crate::types::DType;
use inkwell::values::{BasicValueEnum, IntValue};
use inkwell::{FloatPredicate, IntPredicate};

type V<'ctx> = BasicValueEnum<'ctx>;

/// A partial result: the value (f32 for float tiles) and, for argmax, its index.
#[derive(Clone, Copy)]
struct Acc<'ctx> {
    v: V<'ctx>,
    i: IntValue<'ctx>,
}

impl<'ctx> Lowerer<'_, 'ctx> {
    pub fn reduce(
        &mut self,
        op: ReduceOp,
        src: Value,
        axis: u32,
        result: Value,
    ) -> Res<Vec<V<'ctx>>> {
        let d = self.dtype(src)?;
        if d == DType::Bool {
            return Err("reductions over bool tiles".to_string().into());
        }
        if let (Layout::Rows(_), Layout::Mma(l)) = (self.layout(result), self.layout(src)) {
            if axis == 1 && l.warps_n == 1 {
                return self.reduce_rows(op, src, &l, d);
            }
        }
        let acc = if self.k.ty(result).numel() == 1 {
            self.reduce_all(op, src, d)?
        } else {
            if let Some(regs) = self.reduce_axis_in_warps(op, src, axis, result, d)? {
                return Ok(regs);
            }
            return self.reduce_axis(op, src, axis, result, d);
        };
        Ok(vec![self.finish(op, acc, d)?])
    }

    /// The accumulator's register type: f32 for floats.
    fn acc_dtype(d: DType) -> DType {
        if d.is_float() {
            DType::F32
        } else {
            d
        }
    }

    fn finish(&self, op: ReduceOp, acc: Acc<'ctx>, d: DType) -> Res<V<'ctx>> {
        if op == ReduceOp::Argmax {
            return Ok(acc.i.into());
        }
        if d.is_float() {
            self.narrow(acc.v.into_float_value(), d)
        } else {
            Ok(acc.v)
        }
    }

    fn lift(&self, v: V<'ctx>, i: IntValue<'ctx>, d: DType) -> Res<Acc<'ctx>> {
        let v = if d.is_float() {
            self.widen(v, d)?.into()
        } else {
            v
        };
        Ok(Acc { v, i })
    }

    fn identity(&self, op: ReduceOp, d: DType) -> Acc<'ctx> {
        let i = self.i32(i32::MAX as u64);
        let v: V = if d.is_float() {
            let f = self.ctx.f32_type();
            match op {
                ReduceOp::Sum => f.const_zero(),
                ReduceOp::Max | ReduceOp::Argmax => f.const_float(f64::NEG_INFINITY),
                ReduceOp::Min => f.const_float(f64::INFINITY),
            }
            .into()
        } else {
            let t = super::lower::scalar_type(self.ctx, d).into_int_type();
            let bits = t.get_bit_width();
            let min = 1u64 << (bits - 1);
            match op {
                ReduceOp::Sum => t.const_zero(),
                ReduceOp::Max | ReduceOp::Argmax => t.const_int(min, false),
                ReduceOp::Min => t.const_int(min - 1, false),
            }
            .into()
        };
        Acc { v, i }
    }

    fn combine(&self, op: ReduceOp, a: Acc<'ctx>, b: Acc<'ctx>, d: DType) -> Res<Acc<'ctx>> {
        let ad = Self::acc_dtype(d);
        let v = match op {
            ReduceOp::Sum => self.binary(crate::ir::BinaryOp::Add, a.v, b.v, ad)?,
            ReduceOp::Max => self.binary(crate::ir::BinaryOp::Max, a.v, b.v, ad)?,
            ReduceOp::Min => self.binary(crate::ir::BinaryOp::Min, a.v, b.v, ad)?,
            ReduceOp::Argmax => {
                let earlier = self.b.build_int_compare(IntPredicate::SLT, b.i, a.i, "")?;
                let take_b = if d.is_float() {
                    let (x, y) = (a.v.into_float_value(), b.v.into_float_value());
                    let gt = self.b.build_float_compare(FloatPredicate::OGT, y, x, "")?;
                    let eq = self.b.build_float_compare(FloatPredicate::OEQ, y, x, "")?;
                    let xn = self.b.build_float_compare(FloatPredicate::UNO, x, x, "")?;
                    let yn = self.b.build_float_compare(FloatPredicate::UNO, y, y, "")?;
                    // b wins if larger (NaN largest), or equal (both NaN) and earlier.
                    let bigger = self.b.build_or(gt, yn, "")?;
                    let not_xn = self.b.build_not(xn, "")?;
                    let wins = self.b.build_and(bigger, not_xn, "")?;
                    let both_nan = self.b.build_and(xn, yn, "")?;
                    let tie = self.b.build_or(eq, both_nan, "")?;
                    let tie_wins = self.b.build_and(tie, earlier, "")?;
                    self.b.build_or(wins, tie_wins, "")?
                } else {
                    let (x, y) = (a.v.into_int_value(), b.v.into_int_value());
                    let gt = self.b.build_int_compare(IntPredicate::SGT, y, x, "")?;
                    let eq = self.b.build_int_compare(IntPredicate::EQ, y, x, "")?;
                    let tie_wins = self.b.build_and(eq, earlier, "")?;
                    self.b.build_or(gt, tie_wins, "")?
                };
                let i = self.b.build_select(take_b, b.i, a.i, "")?.into_int_value();
                let v = self.b.build_select(take_b, b.v, a.v, "")?;
                return Ok(Acc { v, i });
            }
        };
        Ok(Acc { v, i: a.i })
    }

    /// Reduces a whole tile to one value held by every thread.
    fn reduce_all(&mut self, op: ReduceOp, src: Value, d: DType) -> Res<Acc<'ctx>> {
        let l = Layout::Blocked(self.blocked(src));
        let regs = self.regs_as(src, &l)?;
        let id = self.identity(op, d);
        let mut acc: Option<Acc> = None;
        for (r, &v) in regs.iter().enumerate() {
            let i = self.flat_index(&l, r as u32)?;
            let x = self.lift(v, i, d)?;
            acc = Some(match acc {
                None => x,
                Some(a) => self.combine(op, a, x, d)?,
            });
        }
        let mut acc = acc.ok_or("reduction of an empty tile".to_string())?;
        if let Some(owner) = self.owner(&l)? {
            // Replicas must not count twice.
            acc = Acc {
                v: self.b.build_select(owner, acc.v, id.v, "")?,
                i: self
                    .b
                    .build_select(owner, acc.i, id.i, "")?
                    .into_int_value(),
            };
        }
        acc = self.butterfly(op, acc, &[16, 8, 4, 2, 1], d)?;
        let warps = self.threads / 32;
        if warps == 1 {
            return Ok(acc);
        }
        self.claim_shared(REDUCE_BYTES);
        let ad = Self::acc_dtype(d);
        let index_base = REDUCE_BYTES - 32 * 4;
        let lane = self.b.build_and(self.tid, self.i32(31), "")?;
        let warp = self.b.build_right_shift(self.tid, self.i32(5), false, "")?;
        let leader = self
            .b
            .build_int_compare(IntPredicate::EQ, lane, self.i32(0), "")?;
        let write = self.ctx.append_basic_block(self.func, "reduce.write");
        let cont = self.ctx.append_basic_block(self.func, "reduce.sync");
        self.b.build_conditional_branch(leader, write, cont)?;
        self.b.position_at_end(write);
        let slot = self.b.build_int_mul(warp, self.i32(8), "")?;
        let p = self.shared_elem(0, slot, DType::Bool)?;
        self.b.build_store(p, acc.v)?;
        if op == ReduceOp::Argmax {
            let p = self.shared_elem(index_base, warp, DType::I32)?;
            self.b.build_store(p, acc.i)?;
        }
        self.b.build_unconditional_branch(cont)?;
        self.b.position_at_end(cont);
        self.barrier()?;
        let mut total: Option<Acc> = None;
        for w in 0..warps {
            let p = self.shared_elem(0, self.i32(w as u64 * 8), DType::Bool)?;
            let v = self
                .b
                .build_load(super::lower::scalar_type(self.ctx, ad), p, "")?;
            let i = if op == ReduceOp::Argmax {
                self.read_shared(index_base, self.i32(w as u64), DType::I32)?
                    .into_int_value()
            } else {
                id.i
            };
            total = Some(match total {
                None => Acc { v, i },
                Some(t) => self.combine(op, t, Acc { v, i }, d)?,
            });
        }
        self.barrier()?;
        total.ok_or_else(|| "no warps".to_string().into())
    }

    /// Reduces the rows of an MMA tile whose warps hold whole rows, into the rows layout: each
    /// thread folds the registers of each of its rows, then the four lanes of its group (which
    /// hold the rest of those rows) exchange with two butterfly shuffles. No shared memory.
    fn reduce_rows(
        &mut self,
        op: ReduceOp,
        src: Value,
        l: &super::mma::MmaLayout,
        d: DType,
    ) -> Res<Vec<V<'ctx>>> {
        let regs = self.regs(src)?;
        let col = |j: u32, c: u32| self.i32((j * super::mma::ATOM_N + c % 2) as u64);
        let mut out = vec![];
        for i in 0..l.atoms_m() {
            for h in 0..2 {
                let mut acc: Option<Acc> = None;
                for j in 0..l.atoms_n() {
                    for c in [2 * h, 2 * h + 1] {
                        let v = regs[(l.atom_reg(i, j) + c) as usize];
                        // Argmax indices: the column within the lane's part, completed below.
                        let x = self.lift(v, col(j, c), d)?;
                        acc = Some(match acc {
                            None => x,
                            Some(a) => self.combine(op, a, x, d)?,
                        });
                    }
                }
                let mut acc = acc.ok_or_else(|| "empty row".to_string())?;
                if op == ReduceOp::Argmax {
                    // Column = 2t + the register's part.
                    let t = self.b.build_and(self.tid, self.i32(3), "")?;
                    let t2 = self.b.build_int_mul(t, self.i32(2), "")?;
                    acc.i = self.b.build_int_add(acc.i, t2, "")?;
                }
                acc = self.butterfly(op, acc, &[1, 2], d)?;
                out.push(self.finish(op, acc, d)?);
            }
        }
        Ok(out)
    }

    /// `shfl.sync.bfly` over the full warp; 64-bit values go as two halves.
    /// Combines `acc` with the value of the lane `l` away, for each `l` of `lanes` in turn
    /// (`shfl.sync.bfly`): afterwards every lane of each group of `2 * max(lanes)` holds the
    /// group's result. Argmax indices travel with their values.
    fn butterfly(
        &self,
        op: ReduceOp,
        mut acc: Acc<'ctx>,
        lanes: &[u32],
        d: DType,
    ) -> Res<Acc<'ctx>> {
        for &lanes in lanes {
            let i = if op == ReduceOp::Argmax {
                self.shuffle(acc.i.into(), lanes)?.into_int_value()
            } else {
                acc.i
            };
            let other = Acc {
                v: self.shuffle(acc.v, lanes)?,
                i,
            };
            acc = self.combine(op, acc, other, d)?;
        }
        Ok(acc)
    }

    fn shuffle(&self, v: V<'ctx>, lanes: u32) -> Res<V<'ctx>> {
        let full = self.i32(u32::MAX as u64).into();
        let args = |x: V<'ctx>| [full, x, self.i32(lanes as u64).into(), self.i32(31).into()];
        if v.is_float_value() {
            return self.call("llvm.nvvm.shfl.sync.bfly.f32", &[], &args(v));
        }
        let x = v.into_int_value();
        if x.get_type().get_bit_width() == 32 {
            return self.call("llvm.nvvm.shfl.sync.bfly.i32", &[], &args(v));
        }
        let i32t = self.ctx.i32_type();
        let lo = self.b.build_int_truncate(x, i32t, "")?;
        let hi_s = self
            .b
            .build_right_shift(x, x.get_type().const_int(32, false), false, "")?;
        let hi = self.b.build_int_truncate(hi_s, i32t, "")?;
        let lo = self.call("llvm.nvvm.shfl.sync.bfly.i32", &[], &args(lo.into()))?;
        let hi = self.call("llvm.nvvm.shfl.sync.bfly.i32", &[], &args(hi.into()))?;
        let t = x.get_type();
        let lo = self.b.build_int_z_extend(lo.into_int_value(), t, "")?;
        let hi = self.b.build_int_z_extend(hi.into_int_value(), t, "")?;
        let hi = self.b.build_left_shift(hi, t.const_int(32, false), "")?;
        Ok(self.b.build_or(hi, lo, "")?.into())
    }

    /// Reduction along an axis that lies within each warp's elements (the common row reduction
    /// of a 2-D tile): registers, then lanes with butterfly shuffles, then one exchange through
    /// shared memory into the result's layout. None when the axis spans warps.
    ///
    /// The flat index of register `g * vec + j` of thread `tid` has the bit fields
    /// `[g | warp | lane | j]` (low bits right), so the axis' bits `[s, s + k)` say which
    /// registers and which lanes hold elements of the same output.
    fn reduce_axis_in_warps(
        &mut self,
        op: ReduceOp,
        src: Value,
        axis: u32,
        result: Value,
        d: DType,
    ) -> Res<Option<Vec<V<'ctx>>>> {
        let l = self.blocked(src);
        let shape = self.k.ty(src).shape.clone();
        if !axis_within_warps(&l, &shape, axis) {
            return Ok(None);
        }
        let out_elems = self.k.ty(result).numel() as u32;
        self.claim_shared(out_elems * 8);
        let s = dim_shifts(&shape)[axis as usize];
        let extent = shape[axis as usize];
        let k = extent.trailing_zeros();
        let axis_bits = ((1u64 << k) - 1) << s;
        let v = l.vec.trailing_zeros();
        let t = l.threads.trailing_zeros();
        // The flat-index bits a register contributes (thread bits left out).
        let reg_bits = |reg: u32| -> u64 {
            let (g, j) = ((reg / l.vec) as u64, (reg % l.vec) as u64);
            (g << (v + t)) | j
        };
        // Fold registers that differ only in axis bits; keep the first register of each group.
        let lb = Layout::Blocked(l);
        let regs = self.regs_as(src, &lb)?;
        let mut partials: Vec<(u32, Acc<'ctx>)> = vec![];
        for (r, &x) in regs.iter().enumerate() {
            let flat = self.flat_index(&lb, r as u32)?;
            let x = self.lift(x, self.digit(flat, s, extent)?, d)?;
            let key = reg_bits(r as u32) & !axis_bits;
            match partials
                .iter_mut()
                .find(|(first, _)| reg_bits(*first) & !axis_bits == key)
            {
                Some((_, acc)) => *acc = self.combine(op, *acc, x, d)?,
                None => partials.push((r as u32, x)),
            }
        }
        for lane_bit in 0..5 {
            if axis_bits >> (v + lane_bit) & 1 == 0 {
                continue;
            }
            for (_, acc) in partials.iter_mut() {
                let i = if op == ReduceOp::Argmax {
                    self.shuffle(acc.i.into(), 1 << lane_bit)?.into_int_value()
                } else {
                    acc.i
                };
                let other = Acc {
                    v: self.shuffle(acc.v, 1 << lane_bit)?,
                    i,
                };
                *acc = self.combine(op, *acc, other, d)?;
            }
        }
        // Every lane of a group now holds its output; all of them write it (the same value).
        let out_d = if op == ReduceOp::Argmax {
            DType::I32
        } else {
            d
        };
        let low = self.i32((1u64 << s) - 1);
        for (first, acc) in &partials {
            let flat = self.flat_index(&lb, *first)?;
            let lo = self.b.build_and(flat, low, "")?;
            let hi = self
                .b
                .build_right_shift(flat, self.i32((s + k) as u64), false, "")?;
            let hi = self.b.build_left_shift(hi, self.i32(s as u64), "")?;
            let out = self.b.build_or(hi, lo, "")?;
            let value = self.finish(op, *acc, d)?;
            let p = self.shared_elem(0, out, out_d)?;
            self.b
                .build_store(p, self.register_to_memory(value, out_d)?)?;
        }
        self.barrier()?;
        let lo = Layout::Blocked(self.blocked(result));
        let mut out = vec![];
        for r in 0..lo.regs() {
            let i = self.flat_index(&lo, r)?;
            out.push(self.read_shared(0, i, out_d)?);
        }
        self.barrier()?;
        Ok(Some(out))
    }

    /// Reduction along one axis of a tile with several outputs, through shared memory.
    fn reduce_axis(
        &mut self,
        op: ReduceOp,
        src: Value,
        axis: u32,
        result: Value,
        d: DType,
    ) -> Res<Vec<V<'ctx>>> {
        let shape = self.k.ty(src).shape.clone();
        let shifts = dim_shifts(&shape);
        let out_shape = self.k.ty(result).shape.clone();
        let out_shifts = dim_shifts(&out_shape);
        let ls = Layout::Blocked(self.blocked(src));
        let out_elems = self.k.ty(result).numel() as u32;
        let src_bytes = self.k.ty(src).numel() as u32 * d.size_bytes() as u32;
        self.claim_shared(src_bytes.max(out_elems * 8));
        self.write_shared(&self.regs_as(src, &ls)?, &ls, d, 0)?;
        self.barrier()?;
        let lo = Layout::Blocked(self.blocked(result));
        let ax = axis as usize;
        let mut bases = vec![];
        for r in 0..lo.regs() {
            let f = self.flat_index(&lo, r)?;
            // The source index of the output element with the reduced coordinate 0.
            let mut base = self.i32(0);
            for (od, &dim) in out_shape.iter().enumerate() {
                let sd = if od < ax { od } else { od + 1 };
                let digit = self.digit(f, out_shifts[od], dim)?;
                let placed = self
                    .b
                    .build_left_shift(digit, self.i32(shifts[sd] as u64), "")?;
                base = self.b.build_or(base, placed, "")?;
            }
            bases.push(base);
        }
        let accs = self.fold_axis(op, &bases, (shifts[ax], shape[ax]), d)?;
        let out = accs
            .into_iter()
            .map(|acc| self.finish(op, acc, d))
            .collect::<Res<_>>()?;
        self.barrier()?;
        Ok(out)
    }

    /// Folds, for each of `bases`, the `extent` elements of the tile in shared memory at
    /// `base | k << shift`, in order of `k`. A loop over `k` (which LLVM unrolls when short):
    /// unrolled here, a long axis with a small (replicated) result would make every thread's
    /// code as long as the axis.
    fn fold_axis(
        &self,
        op: ReduceOp,
        bases: &[IntValue<'ctx>],
        (shift, extent): (u32, u32),
        d: DType,
    ) -> Res<Vec<Acc<'ctx>>> {
        let id = self.identity(op, d);
        let pre = self.current_block()?;
        let body = self.ctx.append_basic_block(self.func, "reduce.k");
        let exit = self.ctx.append_basic_block(self.func, "reduce.end");
        self.b.build_unconditional_branch(body)?;
        self.b.position_at_end(body);
        let k = self.b.build_phi(self.ctx.i32_type(), "k")?;
        let kv = k.as_basic_value().into_int_value();
        // Every phi first, as LLVM requires.
        let mut phis = vec![];
        for _ in bases {
            let v = self.b.build_phi(id.v.get_type(), "acc")?;
            let i = match op {
                ReduceOp::Argmax => Some(self.b.build_phi(self.ctx.i32_type(), "acc.i")?),
                _ => None,
            };
            phis.push((v, i));
        }
        let off = self.b.build_left_shift(kv, self.i32(shift as u64), "")?;
        let mut next = vec![];
        for (&base, (v, i)) in bases.iter().zip(&phis) {
            let acc = Acc {
                v: v.as_basic_value(),
                i: i.map_or(id.i, |i| i.as_basic_value().into_int_value()),
            };
            let x = self.read_shared(0, self.b.build_or(base, off, "")?, d)?;
            next.push(self.combine(op, acc, self.lift(x, kv, d)?, d)?);
        }
        let k_next = self.b.build_int_add(kv, self.i32(1), "")?;
        let more =
            self.b
                .build_int_compare(IntPredicate::ULT, k_next, self.i32(extent as u64), "")?;
        self.b.build_conditional_branch(more, body, exit)?;
        k.add_incoming(&[(&self.i32(0), pre), (&k_next, body)]);
        for ((v, i), n) in phis.iter().zip(&next) {
            v.add_incoming(&[(&id.v, pre), (&n.v, body)]);
            if let Some(i) = i {
                i.add_incoming(&[(&id.i, pre), (&n.i, body)]);
            }
        }
        self.b.position_at_end(exit);
        Ok(next)
    }
}

/// Whether reducing `axis` of a tile laid out as `l` needs no exchange between warps: the tile is
/// not replicated and the axis' flat-index bits miss the warp bits of the layout.
pub fn axis_within_warps(l: &Blocked, shape: &[u32], axis: u32) -> bool {
    if l.replicated() {
        return false;
    }
    let s = dim_shifts(shape)[axis as usize];
    let axis_bits = ((1u64 << shape[axis as usize].trailing_zeros()) - 1) << s;
    let v = l.vec.trailing_zeros();
    let warp_bits = ((1u64 << (l.threads.trailing_zeros() - 5)) - 1) << (v + 5);
    axis_bits & warp_bits == 0
}
