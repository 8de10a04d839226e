//! Four-lane lowering of elementwise ops, following the forms `lanes` decided. Uniform values and
//! sequences are computed once per group by the scalar path (a sequence is represented by its
//! lane 0, which is element `i`); only lane values are vector registers.

use super::consts::{choose, f32_const, int_const};
use super::expf;
use super::half;
use super::lanes::{lane_type, Form};
use super::lower::{Lowerer, Res};
use super::math::MathFn;
use crate::ir::{BinaryOp, CmpPred, Elem, Op, UnaryOp, Value};
use crate::types::DType;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, ConstantData, InstBuilder, MemFlagsData, Type as ClType, Value as ClValue,
};

/// A group of four consecutive elements, starting at element `i`.
#[derive(Clone, Copy)]
pub(super) enum Group {
    /// Every lane holds this scalar.
    Uniform(ClValue),
    /// Lane `k` holds the scalar plus `k` (integers) or plus `k` elements (pointers).
    Seq(ClValue),
    /// One vector register of the element's [`lane_type`].
    Lanes(ClValue),
}

/// Little-endian flags for bitcasts that change the lane count.
pub(super) fn lane_cast() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

impl Lowerer<'_, '_> {
    /// The group of `v` starting at element `i`.
    pub(super) fn group(&mut self, v: Value, i: ClValue) -> Res<Group> {
        if let Some(&s) = self.scalars.get(&v) {
            return Ok(Group::Uniform(s));
        }
        if let Some(&slot) = self.slots.get(&v) {
            let e = self.k.ty(v).elem;
            let addr = self.slot_addr(slot, super::lower::cl_type(e), i);
            let flags = MemFlagsData::new().with_notrap();
            return Ok(Group::Lanes(self.load_lanes(addr, e, flags)));
        }
        match self.facts.du.def_op(v) {
            Some(op) if self.facts.is_virtual(v) => self.op_group(op, v, i),
            _ => Err(format!("value v{} used before it is defined", v.0)),
        }
    }

    /// The group of `v` at `i` as a vector register.
    pub(super) fn lanes(&mut self, v: Value, i: ClValue) -> Res<ClValue> {
        let e = self.k.ty(v).elem;
        let g = self.group(v, i)?;
        self.lanes_of_group(g, e)
    }

    /// `g` as a vector register of `e`'s lane type.
    pub(super) fn lanes_of_group(&mut self, g: Group, e: Elem) -> Res<ClValue> {
        let lt = lane_type(e).ok_or("no lanes for this element type")?;
        Ok(match g {
            Group::Lanes(x) => x,
            Group::Uniform(s) => {
                let s = match e.dtype() {
                    Some(DType::Bf16 | DType::F16) => self.b.ins().uextend(types::I32, s),
                    Some(DType::Bool) => {
                        let m = self.b.ins().ineg(s);
                        self.b.ins().sextend(types::I32, m)
                    }
                    _ => s,
                };
                self.b.ins().splat(lt, s)
            }
            Group::Seq(s) => {
                if e != Elem::Scalar(DType::I32) {
                    return Err("only i32 sequences become lanes".into());
                }
                let base = self.b.ins().splat(lt, s);
                let steps = self.vconst(types::I32X4, &[0, 1, 2, 3]);
                self.b.ins().iadd(base, steps)
            }
        })
    }

    /// A vector constant from integer lanes of `ty`.
    fn vconst(&mut self, ty: ClType, lanes: &[i64]) -> ClValue {
        let w = ty.lane_bits() as usize / 8;
        let bytes: Vec<u8> = lanes
            .iter()
            .flat_map(|l| l.to_le_bytes()[..w].to_vec())
            .collect();
        let c = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
        self.b.ins().vconst(ty, c)
    }

    /// The group at `i` of the result `r` of `op`.
    pub(super) fn op_group(&mut self, op: &Op, r: Value, i: ClValue) -> Res<Group> {
        let form = self
            .op_form(op, r)
            .ok_or_else(|| format!("v{} has no four-lane form", r.0))?;
        match form {
            Form::Uniform => return Ok(Group::Uniform(self.op_elem(op, r, i)?)),
            Form::Seq { .. } => return Ok(Group::Seq(self.op_elem(op, r, i)?)),
            Form::Lanes => {}
        }
        let dtype = |l: &Self, v: Value| l.k.ty(v).dtype().ok_or("pointer lanes");
        let x = match op {
            Op::Reshape(x) => return self.group(*x, i),
            Op::Broadcast(x) => {
                let src = self.k.ty(*x).shape.clone();
                let dst = self.k.ty(r).shape.clone();
                let j = self.broadcast_index(&src, &dst, i);
                return self.group(*x, j);
            }
            Op::Unary(u, x) => {
                let d = dtype(self, *x)?;
                let x = self.lanes(*x, i)?;
                self.vunary(*u, d, x)?
            }
            Op::Binary(o, a, b) => {
                let d = dtype(self, *a)?;
                let x = self.lanes(*a, i)?;
                if matches!(o, BinaryOp::Shl | BinaryOp::Shr) {
                    let amount = self.elem(*b, i)?;
                    return Ok(Group::Lanes(if *o == BinaryOp::Shl {
                        self.b.ins().ishl(x, amount)
                    } else {
                        self.b.ins().sshr(x, amount)
                    }));
                }
                let y = self.lanes(*b, i)?;
                self.vbinary(*o, d, x, y)?
            }
            Op::Cmp(p, a, b) => {
                let d = dtype(self, *a)?;
                if d == DType::I64 {
                    return Ok(Group::Lanes(self.seq_cmp(*p, *a, *b, i)?));
                }
                let x = self.lanes(*a, i)?;
                let y = self.lanes(*b, i)?;
                self.vcmp(*p, d, x, y)
            }
            Op::Select(c, a, b) => {
                let c = self.lanes(*c, i)?;
                let a = self.lanes(*a, i)?;
                let b = self.lanes(*b, i)?;
                choose(&mut self.b, c, a, b)
            }
            Op::Fma(a, b, c) => {
                let d = dtype(self, *a)?;
                let (a, b, c) = (self.lanes(*a, i)?, self.lanes(*b, i)?, self.lanes(*c, i)?);
                if d == DType::I32 {
                    let p = self.b.ins().imul(a, b);
                    self.b.ins().iadd(p, c)
                } else {
                    let (a, b, c) = (self.widen(d, a), self.widen(d, b), self.widen(d, c));
                    let f = self.b.ins().fma(a, b, c);
                    self.narrow(d, f)
                }
            }
            Op::Cast(x) => {
                let (from, to) = (dtype(self, *x)?, dtype(self, r)?);
                let x = self.lanes(*x, i)?;
                self.vcast(from, to, x)?
            }
            Op::Load { ptr, mask, other } => return self.load_group(*ptr, *mask, *other, r, i),
            other => return Err(format!("{other:?} has no four-lane lowering")),
        };
        Ok(Group::Lanes(x))
    }

    /// 16-bit float words (or f32 lanes) as f32 lanes.
    pub(super) fn widen(&mut self, d: DType, x: ClValue) -> ClValue {
        match d {
            DType::Bf16 => half::bf16_word_to_f32(&mut self.b, x),
            DType::F16 => half::f16_word_to_f32(&mut self.b, x),
            _ => x,
        }
    }

    /// f32 lanes rounded to `d`'s words (or kept, for f32).
    pub(super) fn narrow(&mut self, d: DType, x: ClValue) -> ClValue {
        match d {
            DType::Bf16 => half::f32_to_bf16_word(&mut self.b, x),
            DType::F16 => half::f32_to_f16_word(&mut self.b, x),
            _ => x,
        }
    }

    /// A math routine applied lane by lane through its scalar call.
    fn per_lane_call(&mut self, f: MathFn, args: &[ClValue]) -> ClValue {
        let r = self.math(f);
        let mut out = args[0];
        for k in 0..4u8 {
            let lane_args: Vec<ClValue> = args
                .iter()
                .map(|&a| self.b.ins().extractlane(a, k))
                .collect();
            let call = self.b.ins().call(r, &lane_args);
            let y = self.b.inst_results(call)[0];
            out = self.b.ins().insertlane(out, y, k);
        }
        out
    }

    fn vunary(&mut self, op: UnaryOp, d: DType, x: ClValue) -> Res<ClValue> {
        if d.is_float() {
            let x = self.widen(d, x);
            let r = match op {
                UnaryOp::Neg => self.b.ins().fneg(x),
                UnaryOp::Abs => self.b.ins().fabs(x),
                UnaryOp::Sqrt => self.b.ins().sqrt(x),
                UnaryOp::Rsqrt => {
                    let s = self.b.ins().sqrt(x);
                    let one = f32_const(&mut self.b, types::F32X4, 1.0);
                    self.b.ins().fdiv(one, s)
                }
                UnaryOp::Exp => expf::exp(&mut self.b, x),
                UnaryOp::Exp2 => expf::exp2(&mut self.b, x),
                UnaryOp::Sigmoid => expf::sigmoid(&mut self.b, x),
                UnaryOp::Log => self.per_lane_call(MathFn::Log, &[x]),
                UnaryOp::Log2 => self.per_lane_call(MathFn::Log2, &[x]),
                UnaryOp::Tanh => self.per_lane_call(MathFn::Tanh, &[x]),
                UnaryOp::Sin => self.per_lane_call(MathFn::Sin, &[x]),
                UnaryOp::Cos => self.per_lane_call(MathFn::Cos, &[x]),
                UnaryOp::Not => return Err(format!("`not` on {d}")),
            };
            return Ok(self.narrow(d, r));
        }
        Ok(match op {
            UnaryOp::Not => self.b.ins().bnot(x),
            UnaryOp::Neg => self.b.ins().ineg(x),
            UnaryOp::Abs => self.b.ins().iabs(x),
            _ => return Err(format!("{op:?} on {d} lanes")),
        })
    }

    fn vbinary(&mut self, op: BinaryOp, d: DType, a: ClValue, b: ClValue) -> Res<ClValue> {
        if d.is_float() {
            let (a, b) = (self.widen(d, a), self.widen(d, b));
            let ins = self.b.ins();
            let r = match op {
                BinaryOp::Add => ins.fadd(a, b),
                BinaryOp::Sub => ins.fsub(a, b),
                BinaryOp::Mul => ins.fmul(a, b),
                BinaryOp::Div => ins.fdiv(a, b),
                BinaryOp::Min => ins.fmin(a, b),
                BinaryOp::Max => ins.fmax(a, b),
                BinaryOp::Rem => self.per_lane_call(MathFn::Fmod, &[a, b]),
                _ => return Err(format!("{op:?} on {d} lanes")),
            };
            return Ok(self.narrow(d, r));
        }
        let ins = self.b.ins();
        Ok(match (op, d) {
            (BinaryOp::And | BinaryOp::Min, DType::Bool) | (BinaryOp::And, _) => ins.band(a, b),
            (BinaryOp::Or | BinaryOp::Max, DType::Bool) | (BinaryOp::Or, _) => ins.bor(a, b),
            (BinaryOp::Xor, _) => ins.bxor(a, b),
            (BinaryOp::Add, DType::I32) => ins.iadd(a, b),
            (BinaryOp::Sub, DType::I32) => ins.isub(a, b),
            (BinaryOp::Mul, DType::I32) => ins.imul(a, b),
            (BinaryOp::Min, DType::I32) => ins.smin(a, b),
            (BinaryOp::Max, DType::I32) => ins.smax(a, b),
            _ => return Err(format!("{op:?} on {d} lanes")),
        })
    }

    fn vcmp(&mut self, p: CmpPred, d: DType, a: ClValue, b: ClValue) -> ClValue {
        if d.is_float() {
            let (a, b) = (self.widen(d, a), self.widen(d, b));
            let cc = match p {
                CmpPred::Eq => FloatCC::Equal,
                CmpPred::Ne => FloatCC::NotEqual,
                CmpPred::Lt => FloatCC::LessThan,
                CmpPred::Le => FloatCC::LessThanOrEqual,
                CmpPred::Gt => FloatCC::GreaterThan,
                CmpPred::Ge => FloatCC::GreaterThanOrEqual,
            };
            return self.b.ins().fcmp(cc, a, b);
        }
        self.b.ins().icmp(int_cc(p), a, b)
    }

    /// An `i64` comparison between a sequence and a uniform value, as an `i32x4` mask: two
    /// `i64x2` comparisons whose low words are gathered into one register.
    fn seq_cmp(&mut self, p: CmpPred, a: Value, b: Value, i: ClValue) -> Res<ClValue> {
        let (ga, gb) = (self.group(a, i)?, self.group(b, i)?);
        let (seq, uniform, seq_left) = match (ga, gb) {
            (Group::Seq(s), Group::Uniform(u)) => (s, u, true),
            (Group::Uniform(u), Group::Seq(s)) => (s, u, false),
            _ => return Err("i64 lanes".into()),
        };
        let base = self.b.ins().splat(types::I64X2, seq);
        let u = self.b.ins().splat(types::I64X2, uniform);
        let mut halves = vec![];
        for steps in [[0, 1], [2, 3]] {
            let steps = self.vconst(types::I64X2, &steps);
            let s = self.b.ins().iadd(base, steps);
            let (x, y) = if seq_left { (s, u) } else { (u, s) };
            let m = self.b.ins().icmp(int_cc(p), x, y);
            halves.push(self.b.ins().bitcast(types::I8X16, lane_cast(), m));
        }
        // Bytes 0..4 and 8..12 of each half: the low words of its two lanes.
        let picks: Vec<u8> = [0u8, 8, 16, 24].iter().flat_map(|&s| s..s + 4).collect();
        let picks = self.b.func.dfg.immediates.push(ConstantData::from(picks));
        let m = self.b.ins().shuffle(halves[0], halves[1], picks);
        Ok(self.b.ins().bitcast(types::I32X4, lane_cast(), m))
    }

    fn vcast(&mut self, from: DType, to: DType, x: ClValue) -> Res<ClValue> {
        if from == to {
            return Ok(x);
        }
        Ok(match (from, to) {
            (DType::Bool, _) => {
                let one = int_const(&mut self.b, types::I32X4, 1);
                let bit = self.b.ins().band(x, one);
                if to == DType::I32 {
                    bit
                } else {
                    let f = self.b.ins().fcvt_from_sint(types::F32X4, bit);
                    self.narrow(to, f)
                }
            }
            (DType::I32, DType::Bool) => {
                let zero = int_const(&mut self.b, types::I32X4, 0);
                self.b.ins().icmp(IntCC::NotEqual, x, zero)
            }
            (DType::I32, _) => {
                let f = self.b.ins().fcvt_from_sint(types::F32X4, x);
                self.narrow(to, f)
            }
            (_, DType::Bool) => {
                let f = self.widen(from, x);
                let zero = f32_const(&mut self.b, types::F32X4, 0.0);
                self.b.ins().fcmp(FloatCC::NotEqual, f, zero)
            }
            (_, DType::I32) => {
                let f = self.widen(from, x);
                self.b.ins().fcvt_to_sint_sat(types::I32X4, f)
            }
            (_, DType::F32 | DType::Bf16 | DType::F16) => {
                let f = self.widen(from, x);
                self.narrow(to, f)
            }
            _ => return Err(format!("cast {from} to {to} on lanes")),
        })
    }
}

fn int_cc(p: CmpPred) -> IntCC {
    match p {
        CmpPred::Eq => IntCC::Equal,
        CmpPred::Ne => IntCC::NotEqual,
        CmpPred::Lt => IntCC::SignedLessThan,
        CmpPred::Le => IntCC::SignedLessThanOrEqual,
        CmpPred::Gt => IntCC::SignedGreaterThan,
        CmpPred::Ge => IntCC::SignedGreaterThanOrEqual,
    }
}
