//! Reductions along one axis of an N-D tile. Float reductions accumulate in f32 and
//! round once to the element type; along a contiguous axis they keep four interleaved partial
//! results (see `reduce_lanes`), otherwise they go in index order.

use super::consts::{f32_const, int_const};
use super::lanes::LANES;
use super::lower::{cl_type, Lowerer, Res};
use crate::ir::{ReduceOp, Value};
use crate::types::DType;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Value as ClValue};

impl Lowerer<'_, '_> {
    pub(super) fn reduce(&mut self, op: ReduceOp, x: Value, axis: u32, r: Value) -> Res<()> {
        let shape = self.k.ty(x).shape.clone();
        let d = self.k.ty(x).dtype().ok_or("reduction of pointers")?;
        let axis = axis as usize;
        let len = u64::from(*shape.get(axis).ok_or("reduce axis out of range")?);
        let inner: u64 = shape[axis + 1..].iter().map(|&s| u64::from(s)).product();
        let out_n: u64 = shape.iter().map(|&s| u64::from(s)).product::<u64>() / len;
        let scalar_result = self.k.ty(r).is_scalar();
        let slot = if scalar_result {
            None
        } else {
            Some(self.slot_of(r)?)
        };
        let mut result = None;
        self.counted_loop(out_n, |l, o| {
            // Output `o` = (outer, in); its inputs are outer * len * inner + k * inner + in.
            let shift = inner.trailing_zeros() as i64;
            let outer = l.b.ins().ushr_imm_s(o, shift);
            let within = l.b.ins().band_imm_s(o, inner as i64 - 1);
            let base = l.b.ins().imul_imm_s(outer, (len * inner) as i64);
            let base = l.b.ins().iadd(base, within);
            let v = l.reduce_line(op, d, x, base, len, inner)?;
            match slot {
                Some(s) => l.slot_store(s, v, o),
                None => result = Some(v),
            }
            Ok(())
        })?;
        if let Some(v) = result {
            self.scalars.insert(r, v);
        }
        Ok(())
    }

    /// Reduces `len` elements of `x` starting at `base`, `stride` apart.
    fn reduce_line(
        &mut self,
        op: ReduceOp,
        d: DType,
        x: Value,
        base: ClValue,
        len: u64,
        stride: u64,
    ) -> Res<ClValue> {
        let lane_op = matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min);
        let lane_type = matches!(d, DType::F32 | DType::Bf16 | DType::F16 | DType::I32);
        if stride == 1 && len >= LANES && lane_op && lane_type && self.lanes_ok(x) {
            return self.reduce_lanes(op, d, x, base, len);
        }
        let float = d.is_float();
        let acc_ty = if float {
            types::F32
        } else {
            cl_type(self.k.ty(x).elem)
        };
        let init = match (op, float) {
            (ReduceOp::Sum, true) => self.b.ins().f32const(0.0),
            (ReduceOp::Max | ReduceOp::Argmax, true) => self.b.ins().f32const(f32::NEG_INFINITY),
            (ReduceOp::Min, true) => self.b.ins().f32const(f32::INFINITY),
            (ReduceOp::Sum, false) => self.b.ins().iconst(acc_ty, 0),
            (ReduceOp::Max | ReduceOp::Argmax, false) => {
                let min = if d == DType::Bool {
                    0
                } else {
                    i64::MIN >> (64 - acc_ty.bits())
                };
                self.b.ins().iconst(acc_ty, min)
            }
            (ReduceOp::Min, false) => {
                let max = if d == DType::Bool {
                    1
                } else {
                    i64::MAX >> (64 - acc_ty.bits())
                };
                self.b.ins().iconst(acc_ty, max)
            }
        };
        let zero_idx = self.b.ins().iconst(types::I32, 0);
        let accs = self.fold_loop(len, &[init, zero_idx], |l, k, acc| {
            let at = l.b.ins().imul_imm_s(k, stride as i64);
            let at = l.b.ins().iadd(base, at);
            let v = l.elem(x, at)?;
            let v = if float { l.widen_f32(d, v) } else { v };
            let (a, best_i) = (acc[0], acc[1]);
            let ins = l.b.ins();
            Ok(match (op, float) {
                (ReduceOp::Sum, true) => vec![ins.fadd(a, v), best_i],
                (ReduceOp::Sum, false) => vec![ins.iadd(a, v), best_i],
                (ReduceOp::Max, true) => vec![ins.fmax(a, v), best_i],
                (ReduceOp::Min, true) => vec![ins.fmin(a, v), best_i],
                (ReduceOp::Max, false) if d == DType::Bool => vec![ins.umax(a, v), best_i],
                (ReduceOp::Min, false) if d == DType::Bool => vec![ins.umin(a, v), best_i],
                (ReduceOp::Max, false) => vec![ins.smax(a, v), best_i],
                (ReduceOp::Min, false) => vec![ins.smin(a, v), best_i],
                (ReduceOp::Argmax, _) => {
                    // Strictly greater keeps the first of equal maxima; a NaN counts as the
                    // largest value, and the first NaN wins.
                    let better = if float {
                        let gt = ins.fcmp(FloatCC::GreaterThan, v, a);
                        let v_nan = l.b.ins().fcmp(FloatCC::Unordered, v, v);
                        let a_num = l.b.ins().fcmp(FloatCC::Ordered, a, a);
                        let nan_wins = l.b.ins().band(v_nan, a_num);
                        l.b.ins().bor(gt, nan_wins)
                    } else {
                        let cc = if d == DType::Bool {
                            IntCC::UnsignedGreaterThan
                        } else {
                            IntCC::SignedGreaterThan
                        };
                        ins.icmp(cc, v, a)
                    };
                    let k32 = l.b.ins().ireduce(types::I32, k);
                    vec![
                        l.b.ins().select(better, v, a),
                        l.b.ins().select(better, k32, best_i),
                    ]
                }
            })
        })?;
        Ok(match op {
            ReduceOp::Argmax => accs[1],
            _ if float => self.narrow_f32(d, accs[0]),
            _ => accs[0],
        })
    }

    /// Reduces `len` contiguous elements of `x` from `base` four lanes at a time: lane `k`
    /// accumulates elements `k, k + 4, ...`, and the four partial results are combined at the
    /// end. Only for sums, minima and maxima.
    fn reduce_lanes(
        &mut self,
        op: ReduceOp,
        d: DType,
        x: Value,
        base: ClValue,
        len: u64,
    ) -> Res<ClValue> {
        let float = d.is_float();
        let init = match (op, float) {
            (ReduceOp::Sum, true) => f32_const(&mut self.b, types::F32X4, 0.0),
            (ReduceOp::Max, true) => f32_const(&mut self.b, types::F32X4, f32::NEG_INFINITY),
            (ReduceOp::Min, true) => f32_const(&mut self.b, types::F32X4, f32::INFINITY),
            (ReduceOp::Sum, false) => int_const(&mut self.b, types::I32X4, 0),
            (ReduceOp::Max, false) => int_const(&mut self.b, types::I32X4, i32::MIN.into()),
            (_, false) => int_const(&mut self.b, types::I32X4, i32::MAX.into()),
            (_, true) => return Err(format!("{op:?} on lanes")),
        };
        let acc = self.fold_loop(len / LANES, &[init], |l, g, acc| {
            let at = l.b.ins().imul_imm_s(g, LANES as i64);
            let at = l.b.ins().iadd(base, at);
            let v = l.lanes(x, at)?;
            let v = if float { l.widen(d, v) } else { v };
            Ok(vec![l.combine(op, float, acc[0], v)])
        })?[0];
        let lanes: Vec<ClValue> = (0..4u8).map(|k| self.b.ins().extractlane(acc, k)).collect();
        let lo = self.combine(op, float, lanes[0], lanes[1]);
        let hi = self.combine(op, float, lanes[2], lanes[3]);
        let r = self.combine(op, float, lo, hi);
        Ok(if float { self.narrow_f32(d, r) } else { r })
    }

    /// One step of a sum, min or max reduction.
    fn combine(&mut self, op: ReduceOp, float: bool, a: ClValue, b: ClValue) -> ClValue {
        let ins = self.b.ins();
        match (op, float) {
            (ReduceOp::Sum, true) => ins.fadd(a, b),
            (ReduceOp::Max, true) => ins.fmax(a, b),
            (_, true) => ins.fmin(a, b),
            (ReduceOp::Sum, false) => ins.iadd(a, b),
            (ReduceOp::Max, false) => ins.smax(a, b),
            (_, false) => ins.smin(a, b),
        }
    }
}
