//! Exact conversions between `f32` and the 16-bit floats, as Cranelift instruction sequences.
//! Widening is exact; narrowing rounds to nearest, ties to even, keeps NaNs NaN (quiet),
//! overflows to infinity, and produces f16 subnormals.
//!
//! Each conversion is written once over *bit words*: the 16-bit pattern in the low half of an
//! `i32`, either a scalar (`i32`, with `f32`) or four lanes (`i32x4`, with `f32x4`). The scalar
//! path carries 16-bit floats as `i16`; [`bf16_to_f32`] and friends adapt it.

use super::consts::{choose, f32_const, int_const};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// The float type words of type `ty` (`i32` or `i32x4`) convert to.
fn float_of(ty: Type) -> Type {
    if ty.is_vector() {
        types::F32X4
    } else {
        types::F32
    }
}

fn ty(b: &FunctionBuilder, v: Value) -> Type {
    b.func.dfg.value_type(v)
}

fn to_float(b: &mut FunctionBuilder, w: Value) -> Value {
    let t = float_of(ty(b, w));
    b.ins().bitcast(t, MemFlagsData::new(), w)
}

fn to_word(b: &mut FunctionBuilder, x: Value) -> Value {
    let t = ty(b, x).as_int();
    b.ins().bitcast(t, MemFlagsData::new(), x)
}

fn shl(b: &mut FunctionBuilder, x: Value, n: i64) -> Value {
    let n = b.ins().iconst(types::I32, n);
    b.ins().ishl(x, n)
}

fn ushr(b: &mut FunctionBuilder, x: Value, n: i64) -> Value {
    let n = b.ins().iconst(types::I32, n);
    b.ins().ushr(x, n)
}

fn and(b: &mut FunctionBuilder, x: Value, c: i64) -> Value {
    let c = int_const(b, ty(b, x), c);
    b.ins().band(x, c)
}

fn or(b: &mut FunctionBuilder, x: Value, c: i64) -> Value {
    let c = int_const(b, ty(b, x), c);
    b.ins().bor(x, c)
}

fn add(b: &mut FunctionBuilder, x: Value, c: i64) -> Value {
    let c = int_const(b, ty(b, x), c);
    b.ins().iadd(x, c)
}

fn cmp(b: &mut FunctionBuilder, cc: IntCC, x: Value, c: i64) -> Value {
    let c = int_const(b, ty(b, x), c);
    b.ins().icmp(cc, x, c)
}

/// bf16 word to f32: the bf16 is the top half of the f32.
pub(super) fn bf16_word_to_f32(b: &mut FunctionBuilder, w: Value) -> Value {
    let w = shl(b, w, 16);
    to_float(b, w)
}

/// f32 to a bf16 word.
pub(super) fn f32_to_bf16_word(b: &mut FunctionBuilder, x: Value) -> Value {
    let u = to_word(b, x);
    // Round to nearest even on the dropped 16 bits; a carry moves into the exponent, and past
    // the largest finite value gives infinity.
    let top = ushr(b, u, 16);
    let lsb = and(b, top, 1);
    let bias = add(b, lsb, 0x7fff);
    let rounded = b.ins().iadd(u, bias);
    let rounded = ushr(b, rounded, 16);
    let quiet = or(b, top, 0x40);
    // |x| fits in 31 bits, so the signed comparison is the unsigned one.
    let abs = and(b, u, 0x7fff_ffff);
    let is_nan = cmp(b, IntCC::SignedGreaterThan, abs, 0x7f80_0000);
    choose(b, is_nan, quiet, rounded)
}

/// f16 word to f32.
pub(super) fn f16_word_to_f32(b: &mut FunctionBuilder, w: Value) -> Value {
    let wt = ty(b, w);
    let sign = and(b, w, 0x8000);
    let sign = shl(b, sign, 16);
    let mag = and(b, w, 0x7fff);
    // Normals and subnormals: the magnitude bits placed in an f32 and scaled by 2^112, exactly.
    let shifted = shl(b, mag, 13);
    let f = to_float(b, shifted);
    let scale = f32_const(b, float_of(wt), f32::from_bits(0x7780_0000)); // 2^112
    let finite = b.ins().fmul(f, scale);
    let finite = to_word(b, finite);
    // Infinity and NaN: all-ones exponent, payload kept, NaNs made quiet.
    let man = and(b, w, 0x3ff);
    let man_bits = shl(b, man, 13);
    let is_nan = cmp(b, IntCC::NotEqual, man, 0);
    let quiet = int_const(b, wt, 0x7fc0_0000);
    let inf = int_const(b, wt, 0x7f80_0000);
    let top = choose(b, is_nan, quiet, inf);
    let special = b.ins().bor(top, man_bits);
    let is_special = cmp(b, IntCC::SignedGreaterThanOrEqual, mag, 0x7c00);
    let r = choose(b, is_special, special, finite);
    let r = b.ins().bor(r, sign);
    to_float(b, r)
}

/// f32 to an f16 word.
pub(super) fn f32_to_f16_word(b: &mut FunctionBuilder, x: Value) -> Value {
    let u = to_word(b, x);
    let wt = ty(b, u);
    let sign = ushr(b, u, 16);
    let sign = and(b, sign, 0x8000);
    let a = and(b, u, 0x7fff_ffff);
    // Normal results: rebias the exponent and round the 13 dropped bits to nearest even.
    let lsb = ushr(b, a, 13);
    let lsb = and(b, lsb, 1);
    let bias = add(b, lsb, 0xfff);
    let normal = b.ins().iadd(a, bias);
    let normal = ushr(b, normal, 13);
    let normal = add(b, normal, -(112 << 10));
    // Below 2^-14 the f16 bits are |x| * 2^24 rounded to an integer (up to 0x400, the smallest
    // normal); the scaling is exact and `nearest` rounds ties to even.
    let af = to_float(b, a);
    let scale = f32_const(b, ty(b, af), 16_777_216.0);
    let scaled = b.ins().fmul(af, scale);
    let scaled = b.ins().nearest(scaled);
    // In range (|x| < 2^-14) the result is below 2^10, so the signed conversion is exact.
    let sub = b.ins().fcvt_to_sint_sat(wt, scaled);
    // NaN: quiet, top payload bits kept; overflow (>= 65520 after rounding) and inf: infinity.
    let man = and(b, a, 0x7f_ffff);
    let man = ushr(b, man, 13);
    let nan = or(b, man, 0x7e00);
    let inf = int_const(b, wt, 0x7c00);

    // `a` is below 2^31, so signed comparisons are the unsigned ones.
    let is_sub = cmp(b, IntCC::SignedLessThan, a, 0x3880_0000);
    let r = choose(b, is_sub, sub, normal);
    let is_big = cmp(b, IntCC::SignedGreaterThanOrEqual, a, 0x477f_f000);
    let r = choose(b, is_big, inf, r);
    let is_nan = cmp(b, IntCC::SignedGreaterThan, a, 0x7f80_0000);
    let r = choose(b, is_nan, nan, r);
    b.ins().bor(r, sign)
}

/// bf16 bits (`i16`) to f32.
pub(super) fn bf16_to_f32(b: &mut FunctionBuilder, h: Value) -> Value {
    let w = b.ins().uextend(types::I32, h);
    bf16_word_to_f32(b, w)
}

/// f32 to bf16 bits (`i16`).
pub(super) fn f32_to_bf16(b: &mut FunctionBuilder, x: Value) -> Value {
    let w = f32_to_bf16_word(b, x);
    b.ins().ireduce(types::I16, w)
}

/// f16 bits (`i16`) to f32.
pub(super) fn f16_to_f32(b: &mut FunctionBuilder, h: Value) -> Value {
    let w = b.ins().uextend(types::I32, h);
    f16_word_to_f32(b, w)
}

/// f32 to f16 bits (`i16`).
pub(super) fn f32_to_f16(b: &mut FunctionBuilder, x: Value) -> Value {
    let w = f32_to_f16_word(b, x);
    b.ins().ireduce(types::I16, w)
}
