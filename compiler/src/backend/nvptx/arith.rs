//! Elementwise math, comparisons and casts on single registers.
//!
//! `bf16`/`f16` arithmetic is computed in `f32` and rounded back. Approximations (PTX `.approx`
//! instructions, which flush nothing here: the non-`ftz` forms are used):
//! - `exp(x) = ex2.approx(x * log2 e)`, `exp2 = ex2.approx`: max relative error 2^-22 of ex2, plus
//!   the rounding of the product (about 2 ulp in total for moderate |x|);
//! - `log(x) = lg2.approx(x) * ln 2`, `log2 = lg2.approx`: max absolute error 2^-22 near 1;
//! - `rsqrt = rsqrt.approx` (max relative error 2^-22.9); `sqrt` is the exact `sqrt.rn`;
//! - `sin`/`cos = sin.approx`/`cos.approx`: absolute error 2^-20.5 on [-pi, pi], growing outside;
//! - `sigmoid(x) = 1 / (1 + exp(-x))` with an exact division;
//! - `tanh(x) = sign(x) * (1 - 2 / (exp(2|x|) + 1))`: absolute error about 1e-7, but the relative
//!   error for |x| < 1e-4 is poor (cancellation).

use super::lower::{Lowerer, Res};
use crate::ir::{BinaryOp, CmpPred, UnaryOp};
use crate::types::DType;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};
use std::f64::consts::{LN_2, LOG2_E};

type V<'ctx> = BasicValueEnum<'ctx>;

impl<'ctx> Lowerer<'_, 'ctx> {
    /// A half-precision value widened to f32 (f32 passes through).
    pub fn widen(&self, x: V<'ctx>, d: DType) -> Res<FloatValue<'ctx>> {
        let f = x.into_float_value();
        Ok(match d {
            DType::F32 => f,
            _ => self.b.build_float_ext(f, self.ctx.f32_type(), "")?,
        })
    }

    /// An f32 rounded (to nearest even) to `d`.
    pub fn narrow(&self, x: FloatValue<'ctx>, d: DType) -> Res<V<'ctx>> {
        Ok(match d {
            DType::F32 => x.into(),
            _ => self
                .b
                .build_float_trunc(
                    x,
                    super::lower::scalar_type(self.ctx, d).into_float_type(),
                    "",
                )?
                .into(),
        })
    }

    fn f32c(&self, v: f64) -> FloatValue<'ctx> {
        self.ctx.f32_type().const_float(v)
    }

    fn f32_call(&self, name: &str, args: &[FloatValue<'ctx>]) -> Res<FloatValue<'ctx>> {
        let args: Vec<V> = args.iter().map(|&a| a.into()).collect();
        let overload = if name.starts_with("llvm.nvvm.") {
            vec![]
        } else {
            vec![self.ctx.f32_type().into()]
        };
        Ok(self.call(name, &overload, &args)?.into_float_value())
    }

    fn exp2f(&self, x: FloatValue<'ctx>) -> Res<FloatValue<'ctx>> {
        self.f32_call("llvm.nvvm.ex2.approx.f", &[x])
    }

    fn expf(&self, x: FloatValue<'ctx>) -> Res<FloatValue<'ctx>> {
        let s = self.b.build_float_mul(x, self.f32c(LOG2_E), "")?;
        self.exp2f(s)
    }

    pub fn unary(&self, op: UnaryOp, x: V<'ctx>, d: DType) -> Res<V<'ctx>> {
        if !d.is_float() {
            let i = x.into_int_value();
            return Ok(match op {
                UnaryOp::Neg => self.b.build_int_neg(i, "")?.into(),
                UnaryOp::Not => self.b.build_not(i, "")?.into(),
                UnaryOp::Abs => self.call(
                    "llvm.abs",
                    &[i.get_type().into()],
                    &[i.into(), self.ctx.bool_type().const_zero().into()],
                )?,
                _ => return Err(format!("{op:?} on {d}").into()),
            });
        }
        let f = self.widen(x, d)?;
        let one = self.f32c(1.0);
        let r = match op {
            UnaryOp::Neg => self.b.build_float_neg(f, "")?,
            UnaryOp::Abs => self.f32_call("llvm.fabs", &[f])?,
            UnaryOp::Exp => self.expf(f)?,
            UnaryOp::Exp2 => self.exp2f(f)?,
            UnaryOp::Log => {
                let l = self.f32_call("llvm.nvvm.lg2.approx.f", &[f])?;
                self.b.build_float_mul(l, self.f32c(LN_2), "")?
            }
            UnaryOp::Log2 => self.f32_call("llvm.nvvm.lg2.approx.f", &[f])?,
            UnaryOp::Sqrt => self.f32_call("llvm.sqrt", &[f])?,
            UnaryOp::Rsqrt => self.f32_call("llvm.nvvm.rsqrt.approx.f", &[f])?,
            UnaryOp::Sin => self.f32_call("llvm.nvvm.sin.approx.f", &[f])?,
            UnaryOp::Cos => self.f32_call("llvm.nvvm.cos.approx.f", &[f])?,
            UnaryOp::Sigmoid => {
                let e = self.expf(self.b.build_float_neg(f, "")?)?;
                let den = self.b.build_float_add(one, e, "")?;
                self.b.build_float_div(one, den, "")?
            }
            UnaryOp::Tanh => {
                let a = self.f32_call("llvm.fabs", &[f])?;
                let e = self.expf(self.b.build_float_mul(a, self.f32c(2.0), "")?)?;
                let den = self.b.build_float_add(e, one, "")?;
                let q = self.b.build_float_div(self.f32c(2.0), den, "")?;
                let t = self.b.build_float_sub(one, q, "")?;
                self.f32_call("llvm.copysign", &[t, f])?
            }
            UnaryOp::Not => return Err(format!("{op:?} on {d}").into()),
        };
        self.narrow(r, d)
    }

    pub fn binary(&self, op: BinaryOp, x: V<'ctx>, y: V<'ctx>, d: DType) -> Res<V<'ctx>> {
        if d.is_float() {
            let (a, b) = (self.widen(x, d)?, self.widen(y, d)?);
            let r = match op {
                BinaryOp::Add => self.b.build_float_add(a, b, "")?,
                BinaryOp::Sub => self.b.build_float_sub(a, b, "")?,
                BinaryOp::Mul => self.b.build_float_mul(a, b, "")?,
                BinaryOp::Div => self.b.build_float_div(a, b, "")?,
                BinaryOp::Rem => self.b.build_float_rem(a, b, "")?,
                BinaryOp::Min => self.f32_call("llvm.minimum", &[a, b])?,
                BinaryOp::Max => self.f32_call("llvm.maximum", &[a, b])?,
                _ => return Err(format!("{op:?} on {d}").into()),
            };
            return self.narrow(r, d);
        }
        let (a, b) = (x.into_int_value(), y.into_int_value());
        let ty = a.get_type();
        let r = match op {
            BinaryOp::Add => self.b.build_int_add(a, b, "")?,
            BinaryOp::Sub => self.b.build_int_sub(a, b, "")?,
            BinaryOp::Mul => self.b.build_int_mul(a, b, "")?,
            BinaryOp::Div | BinaryOp::Rem => self.div_rem(op == BinaryOp::Div, a, b)?,
            BinaryOp::Min => self
                .call("llvm.smin", &[ty.into()], &[a.into(), b.into()])?
                .into_int_value(),
            BinaryOp::Max => self
                .call("llvm.smax", &[ty.into()], &[a.into(), b.into()])?
                .into_int_value(),
            BinaryOp::And => self.b.build_and(a, b, "")?,
            BinaryOp::Or => self.b.build_or(a, b, "")?,
            BinaryOp::Xor => self.b.build_xor(a, b, "")?,
            BinaryOp::Shl | BinaryOp::Shr => {
                let m = ty.const_int(ty.get_bit_width() as u64 - 1, false);
                let s = self.b.build_and(b, m, "")?;
                if op == BinaryOp::Shl {
                    self.b.build_left_shift(a, s, "")?
                } else {
                    self.b.build_right_shift(a, s, true, "")?
                }
            }
        };
        Ok(r.into())
    }

    /// Signed division or remainder that never hits LLVM's undefined cases: a zero divisor is
    /// replaced by 1, and `x / -1` is computed as `-x` (wrapping), `x % -1` as 0.
    fn div_rem(&self, div: bool, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Res<IntValue<'ctx>> {
        let ty = a.get_type();
        let zero = self
            .b
            .build_int_compare(IntPredicate::EQ, b, ty.const_zero(), "")?;
        let minus1 = self
            .b
            .build_int_compare(IntPredicate::EQ, b, ty.const_all_ones(), "")?;
        let unsafe_ = self.b.build_or(zero, minus1, "")?;
        let safe_b = self
            .b
            .build_select(unsafe_, ty.const_int(1, false), b, "")?
            .into_int_value();
        let q = if div {
            self.b.build_int_signed_div(a, safe_b, "")?
        } else {
            self.b.build_int_signed_rem(a, safe_b, "")?
        };
        let special = if div {
            self.b.build_int_neg(a, "")?
        } else {
            ty.const_zero()
        };
        Ok(self
            .b
            .build_select(minus1, special, q, "")?
            .into_int_value())
    }

    pub fn compare(&self, pred: CmpPred, x: V<'ctx>, y: V<'ctx>, d: DType) -> Res<V<'ctx>> {
        if d.is_float() {
            let (a, b) = (self.widen(x, d)?, self.widen(y, d)?);
            let p = match pred {
                CmpPred::Eq => FloatPredicate::OEQ,
                CmpPred::Ne => FloatPredicate::UNE,
                CmpPred::Lt => FloatPredicate::OLT,
                CmpPred::Le => FloatPredicate::OLE,
                CmpPred::Gt => FloatPredicate::OGT,
                CmpPred::Ge => FloatPredicate::OGE,
            };
            return Ok(self.b.build_float_compare(p, a, b, "")?.into());
        }
        let p = match pred {
            CmpPred::Eq => IntPredicate::EQ,
            CmpPred::Ne => IntPredicate::NE,
            CmpPred::Lt => IntPredicate::SLT,
            CmpPred::Le => IntPredicate::SLE,
            CmpPred::Gt => IntPredicate::SGT,
            CmpPred::Ge => IntPredicate::SGE,
        };
        Ok(self
            .b
            .build_int_compare(p, x.into_int_value(), y.into_int_value(), "")?
            .into())
    }

    pub fn fma(&self, x: V<'ctx>, y: V<'ctx>, z: V<'ctx>, d: DType) -> Res<V<'ctx>> {
        if !d.is_float() {
            let p = self
                .b
                .build_int_mul(x.into_int_value(), y.into_int_value(), "")?;
            return Ok(self.b.build_int_add(p, z.into_int_value(), "")?.into());
        }
        let (a, b, c) = (self.widen(x, d)?, self.widen(y, d)?, self.widen(z, d)?);
        let r = self.f32_call("llvm.fma", &[a, b, c])?;
        self.narrow(r, d)
    }

    /// Conversion with the IR's rules (saturating float-to-int, NaN to 0).
    pub fn cast(&self, x: V<'ctx>, from: DType, to: DType) -> Res<V<'ctx>> {
        if from == to {
            return Ok(x);
        }
        let to_ty = super::lower::scalar_type(self.ctx, to);
        if to == DType::Bool {
            let zero = super::lower::scalar_type(self.ctx, from).const_zero();
            return self.compare(CmpPred::Ne, x, zero, from);
        }
        Ok(match (from.is_float(), to.is_float()) {
            (true, true) => {
                let f = self.widen(x, from)?;
                self.narrow(f, to)?
            }
            (true, false) => {
                let f = self.widen(x, from)?;
                self.call(
                    "llvm.fptosi.sat",
                    &[to_ty, self.ctx.f32_type().into()],
                    &[f.into()],
                )?
            }
            (false, true) => {
                let i = x.into_int_value();
                let t = to_ty.into_float_type();
                if from == DType::Bool {
                    self.b.build_unsigned_int_to_float(i, t, "")?.into()
                } else {
                    self.b.build_signed_int_to_float(i, t, "")?.into()
                }
            }
            (false, false) => {
                let i = x.into_int_value();
                let t = to_ty.into_int_type();
                if from == DType::Bool {
                    self.b.build_int_z_extend(i, t, "")?.into()
                } else if from.bits() < to.bits() {
                    self.b.build_int_s_extend(i, t, "")?.into()
                } else {
                    self.b.build_int_truncate(i, t, "")?.into()
                }
            }
        })
    }
}
