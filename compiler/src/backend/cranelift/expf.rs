//! `exp`, `exp2` and `sigmoid` as inline instruction sequences over `f32` or `f32x4`, so that
//! elementwise loops need no call per element. Accurate to about one ulp: Cody-Waite reduction
//! to |r| <= ln(2)/2, a degree-7 polynomial for e^r, and scaling by 2^n in two exact steps so
//! that results underflow gradually to subnormals and zero and overflow to infinity. NaN in,
//! NaN out.

use super::consts::{choose, f32_const, int_const};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// ln(2) split so that `n * LN2_HI` is exact for the |n| <= 151 used here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// e^r = 1 + r + r^2 * P(r) on |r| <= ln(2)/2, highest coefficient first.
const P: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// 1.5 * 2^23: adding it rounds any |t| < 2^22 to an integer (ties to even), which then sits
/// in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;

fn int_type(t: Type) -> Type {
    if t.is_vector() {
        types::I32X4
    } else {
        types::I32
    }
}

/// `x` limited to `[lo, hi]`; NaN stays NaN (its comparisons are false). Cheaper than
/// `fmax`/`fmin`, which also order signed zeros.
fn clamp(b: &mut FunctionBuilder, x: Value, lo: f32, hi: f32) -> Value {
    let t = b.func.dfg.value_type(x);
    let lo = f32_const(b, t, lo);
    let hi = f32_const(b, t, hi);
    let below = b.ins().fcmp(FloatCC::LessThan, x, lo);
    let x = choose(b, below, lo, x);
    let above = b.ins().fcmp(FloatCC::GreaterThan, x, hi);
    choose(b, above, hi, x)
}

/// `t` rounded to an integer, as a float and as an `i32` (per lane).
fn round(b: &mut FunctionBuilder, t: Value) -> (Value, Value) {
    let ty = b.func.dfg.value_type(t);
    let c = f32_const(b, ty, ROUNDER);
    let s = b.ins().fadd(t, c);
    let nf = b.ins().fsub(s, c);
    let it = int_type(ty);
    let si = b.ins().bitcast(it, MemFlagsData::new(), s);
    let ci = b.ins().bitcast(it, MemFlagsData::new(), c);
    (nf, b.ins().isub(si, ci))
}

/// e^r for the reduced argument `r`.
fn exp_reduced(b: &mut FunctionBuilder, r: Value) -> Value {
    let ty = b.func.dfg.value_type(r);
    let mut p = f32_const(b, ty, P[0]);
    for c in &P[1..] {
        let c = f32_const(b, ty, *c);
        p = b.ins().fmul(p, r);
        p = b.ins().fadd(p, c);
    }
    let r2 = b.ins().fmul(r, r);
    let p = b.ins().fmul(p, r2);
    let one = f32_const(b, ty, 1.0);
    let p = b.ins().fadd(p, r);
    b.ins().fadd(p, one)
}

/// 2^k as a float, for -126 <= k <= 127.
fn pow2(b: &mut FunctionBuilder, k: Value, ty: Type) -> Value {
    let it = b.func.dfg.value_type(k);
    let bias = int_const(b, it, 127);
    let e = b.ins().iadd(k, bias);
    let sh = b.ins().iconst(types::I32, 23);
    let e = b.ins().ishl(e, sh);
    b.ins().bitcast(ty, MemFlagsData::new(), e)
}

/// `y * 2^n` for |n| <= 151, as two factors that are each a normal float.
fn scale(b: &mut FunctionBuilder, y: Value, n: Value) -> Value {
    let ty = b.func.dfg.value_type(y);
    let one = b.ins().iconst(types::I32, 1);
    let half = b.ins().sshr(n, one);
    let rest = b.ins().isub(n, half);
    let f1 = pow2(b, half, ty);
    let f2 = pow2(b, rest, ty);
    let y = b.ins().fmul(y, f1);
    b.ins().fmul(y, f2)
}

/// e^x.
pub(super) fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    // Outside [-104, 89] e^x rounds to 0 or overflows anyway.
    let x = clamp(b, x, -104.0, 89.0);
    let log2e = f32_const(b, ty, std::f32::consts::LOG2_E);
    let t = b.ins().fmul(x, log2e);
    let (nf, n) = round(b, t);
    let hi = f32_const(b, ty, LN2_HI);
    let lo = f32_const(b, ty, LN2_LO);
    let r = b.ins().fmul(nf, hi);
    let r = b.ins().fsub(x, r);
    let r_lo = b.ins().fmul(nf, lo);
    let r = b.ins().fsub(r, r_lo);
    let y = exp_reduced(b, r);
    scale(b, y, n)
}

/// 2^x.
pub(super) fn exp2(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let x = clamp(b, x, -151.0, 129.0);
    let (nf, n) = round(b, x);
    let f = b.ins().fsub(x, nf);
    let ln2 = f32_const(b, ty, std::f32::consts::LN_2);
    let r = b.ins().fmul(f, ln2);
    let y = exp_reduced(b, r);
    scale(b, y, n)
}

/// 1 / (1 + e^-x).
pub(super) fn sigmoid(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let nx = b.ins().fneg(x);
    let e = exp(b, nx);
    let one = f32_const(b, ty, 1.0);
    let d = b.ins().fadd(one, e);
    b.ins().fdiv(one, d)
}
