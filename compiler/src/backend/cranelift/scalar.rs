//! The semantics of one element: arithmetic, comparisons and casts for every element type.
//! 16-bit floats are widened to f32, computed, and rounded back.

use super::expf;
use super::half;
use super::lower::{Lowerer, Res};
use super::math::MathFn;
use crate::ir::{BinaryOp, CmpPred, UnaryOp};
use crate::types::DType;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Type as ClType, Value as ClValue};

fn int_type(d: DType) -> ClType {
    match d {
        DType::I64 => types::I64,
        DType::Bool => types::I8,
        _ => types::I32,
    }
}

impl Lowerer<'_, '_> {
    /// A float element of type `d` as an f32.
    pub(super) fn widen_f32(&mut self, d: DType, x: ClValue) -> ClValue {
        match d {
            DType::Bf16 => half::bf16_to_f32(&mut self.b, x),
            DType::F16 => half::f16_to_f32(&mut self.b, x),
            _ => x,
        }
    }

    /// An f32 rounded to the float type `d`.
    pub(super) fn narrow_f32(&mut self, d: DType, x: ClValue) -> ClValue {
        match d {
            DType::Bf16 => half::f32_to_bf16(&mut self.b, x),
            DType::F16 => half::f32_to_f16(&mut self.b, x),
            _ => x,
        }
    }

    fn call1(&mut self, f: MathFn, x: ClValue) -> ClValue {
        let r = self.math(f);
        let call = self.b.ins().call(r, &[x]);
        self.b.inst_results(call)[0]
    }

    pub(super) fn unary(&mut self, op: UnaryOp, d: DType, x: ClValue) -> Res<ClValue> {
        if d.is_float() {
            let x = self.widen_f32(d, x);
            let r = match op {
                UnaryOp::Neg => self.b.ins().fneg(x),
                UnaryOp::Abs => self.b.ins().fabs(x),
                UnaryOp::Sqrt => self.b.ins().sqrt(x),
                UnaryOp::Rsqrt => {
                    let s = self.b.ins().sqrt(x);
                    let one = self.b.ins().f32const(1.0);
                    self.b.ins().fdiv(one, s)
                }
                UnaryOp::Exp => expf::exp(&mut self.b, x),
                UnaryOp::Exp2 => expf::exp2(&mut self.b, x),
                UnaryOp::Log => self.call1(MathFn::Log, x),
                UnaryOp::Log2 => self.call1(MathFn::Log2, x),
                UnaryOp::Tanh => self.call1(MathFn::Tanh, x),
                UnaryOp::Sin => self.call1(MathFn::Sin, x),
                UnaryOp::Cos => self.call1(MathFn::Cos, x),
                UnaryOp::Sigmoid => expf::sigmoid(&mut self.b, x),
                UnaryOp::Not => return Err(format!("`not` on {d}")),
            };
            return Ok(self.narrow_f32(d, r));
        }
        Ok(match (op, d) {
            (UnaryOp::Not, DType::Bool) => self.b.ins().bxor_imm_s(x, 1),
            (UnaryOp::Not, _) => self.b.ins().bnot(x),
            (UnaryOp::Neg, DType::I32 | DType::I64) => self.b.ins().ineg(x),
            (UnaryOp::Abs, DType::I32 | DType::I64) => self.b.ins().iabs(x),
            _ => return Err(format!("{op:?} on {d}")),
        })
    }

    pub(super) fn binary(
        &mut self,
        op: BinaryOp,
        d: DType,
        a: ClValue,
        b: ClValue,
    ) -> Res<ClValue> {
        if d.is_float() {
            let a = self.widen_f32(d, a);
            let b = self.widen_f32(d, b);
            let ins = self.b.ins();
            let r = match op {
                BinaryOp::Add => ins.fadd(a, b),
                BinaryOp::Sub => ins.fsub(a, b),
                BinaryOp::Mul => ins.fmul(a, b),
                BinaryOp::Div => ins.fdiv(a, b),
                BinaryOp::Min => ins.fmin(a, b),
                BinaryOp::Max => ins.fmax(a, b),
                BinaryOp::Rem => {
                    let f = self.math(MathFn::Fmod);
                    let call = self.b.ins().call(f, &[a, b]);
                    self.b.inst_results(call)[0]
                }
                _ => return Err(format!("{op:?} on {d}")),
            };
            return Ok(self.narrow_f32(d, r));
        }
        let ins = self.b.ins();
        Ok(match op {
            BinaryOp::And => ins.band(a, b),
            BinaryOp::Or => ins.bor(a, b),
            BinaryOp::Xor => ins.bxor(a, b),
            _ if d == DType::Bool => match op {
                BinaryOp::Min => ins.band(a, b),
                BinaryOp::Max => ins.bor(a, b),
                _ => return Err(format!("{op:?} on bool")),
            },
            BinaryOp::Add => ins.iadd(a, b),
            BinaryOp::Sub => ins.isub(a, b),
            BinaryOp::Mul => ins.imul(a, b),
            BinaryOp::Min => ins.smin(a, b),
            BinaryOp::Max => ins.smax(a, b),
            // Cranelift takes shift amounts modulo the width, as the IR wants.
            BinaryOp::Shl => ins.ishl(a, b),
            BinaryOp::Shr => ins.sshr(a, b),
            BinaryOp::Div | BinaryOp::Rem => {
                let b = self.safe_divisor(d, a, b);
                if op == BinaryOp::Div {
                    self.b.ins().sdiv(a, b)
                } else {
                    self.b.ins().srem(a, b)
                }
            }
        })
    }

    /// Replaces divisors that would trap (zero, or -1 under `MIN`) by 1: `x / 0` is then `x`
    /// (unspecified by the IR), and `MIN / -1` gives `MIN`, the wrapping result (`rem` gives 0).
    fn safe_divisor(&mut self, d: DType, a: ClValue, b: ClValue) -> ClValue {
        let ty = int_type(d);
        let min = if ty == types::I64 {
            i64::MIN
        } else {
            i64::from(i32::MIN)
        };
        let ins = self.b.ins();
        let zero = ins.icmp_imm_s(IntCC::Equal, b, 0);
        let a_min = self.b.ins().icmp_imm_s(IntCC::Equal, a, min);
        let b_m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let overflow = self.b.ins().band(a_min, b_m1);
        let bad = self.b.ins().bor(zero, overflow);
        let one = self.b.ins().iconst(ty, 1);
        self.b.ins().select(bad, one, b)
    }

    /// A comparison, as a bool (i8 0 or 1). Float `!=` is true on NaN, the others false.
    pub(super) fn cmp(&mut self, p: CmpPred, d: DType, a: ClValue, b: ClValue) -> ClValue {
        if d.is_float() {
            let a = self.widen_f32(d, a);
            let b = self.widen_f32(d, b);
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
        let signed = d != DType::Bool;
        let cc = match (p, signed) {
            (CmpPred::Eq, _) => IntCC::Equal,
            (CmpPred::Ne, _) => IntCC::NotEqual,
            (CmpPred::Lt, true) => IntCC::SignedLessThan,
            (CmpPred::Le, true) => IntCC::SignedLessThanOrEqual,
            (CmpPred::Gt, true) => IntCC::SignedGreaterThan,
            (CmpPred::Ge, true) => IntCC::SignedGreaterThanOrEqual,
            (CmpPred::Lt, false) => IntCC::UnsignedLessThan,
            (CmpPred::Le, false) => IntCC::UnsignedLessThanOrEqual,
            (CmpPred::Gt, false) => IntCC::UnsignedGreaterThan,
            (CmpPred::Ge, false) => IntCC::UnsignedGreaterThanOrEqual,
        };
        self.b.ins().icmp(cc, a, b)
    }

    /// `a * b + c`; one rounding for f32 (16-bit floats round once more when narrowed).
    pub(super) fn fma(&mut self, d: DType, a: ClValue, b: ClValue, c: ClValue) -> ClValue {
        if d.is_float() {
            let a = self.widen_f32(d, a);
            let b = self.widen_f32(d, b);
            let c = self.widen_f32(d, c);
            let r = self.b.ins().fma(a, b, c);
            return self.narrow_f32(d, r);
        }
        let p = self.b.ins().imul(a, b);
        self.b.ins().iadd(p, c)
    }

    /// Converts an element between types with the IR's rounding rules.
    pub(super) fn cast(&mut self, from: DType, to: DType, x: ClValue) -> ClValue {
        if from == to {
            return x;
        }
        match (from.is_float(), to) {
            (_, DType::Bool) => {
                if from.is_float() {
                    let f = self.widen_f32(from, x);
                    let zero = self.b.ins().f32const(0.0);
                    self.b.ins().fcmp(FloatCC::NotEqual, f, zero)
                } else {
                    self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
                }
            }
            (true, DType::I32 | DType::I64) => {
                let f = self.widen_f32(from, x);
                self.b.ins().fcvt_to_sint_sat(int_type(to), f)
            }
            (true, _) => {
                let f = self.widen_f32(from, x);
                self.narrow_f32(to, f)
            }
            (false, DType::I32 | DType::I64) => {
                let (fw, tw) = (int_type(from).bits(), int_type(to).bits());
                if from == DType::Bool {
                    self.b.ins().uextend(int_type(to), x)
                } else if fw < tw {
                    self.b.ins().sextend(int_type(to), x)
                } else {
                    self.b.ins().ireduce(int_type(to), x)
                }
            }
            (false, _) => {
                let f = if from == DType::Bool {
                    let w = self.b.ins().uextend(types::I32, x);
                    self.b.ins().fcvt_from_uint(types::F32, w)
                } else {
                    self.b.ins().fcvt_from_sint(types::F32, x)
                };
                self.narrow_f32(to, f)
            }
        }
    }
}
