//! Exact conversions between `f32` and the 16-bit floats (carried as `i16` bit patterns), as
//! Cranelift instruction sequences. Widening is exact; narrowing rounds to nearest, ties to even,
//! keeps NaNs NaN (quiet), overflows to infinity, and produces f16 subnormals.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

fn bits_to_f32(b: &mut FunctionBuilder, bits: Value) -> Value {
    b.ins().bitcast(types::F32, MemFlagsData::new(), bits)
}

fn f32_to_bits(b: &mut FunctionBuilder, x: Value) -> Value {
    b.ins().bitcast(types::I32, MemFlagsData::new(), x)
}

/// bf16 bits to f32: the bf16 is the top half of the f32.
pub(super) fn bf16_to_f32(b: &mut FunctionBuilder, h: Value) -> Value {
    let w = b.ins().uextend(types::I32, h);
    let w = b.ins().ishl_imm_s(w, 16);
    bits_to_f32(b, w)
}

/// f32 to bf16 bits.
pub(super) fn f32_to_bf16(b: &mut FunctionBuilder, x: Value) -> Value {
    let u = f32_to_bits(b, x);
    // Round to nearest even on the dropped 16 bits; a carry moves into the exponent, and past
    // the largest finite value gives infinity.
    let lsb = b.ins().ushr_imm_s(u, 16);
    let lsb = b.ins().band_imm_s(lsb, 1);
    let bias = b.ins().iadd_imm_s(lsb, 0x7fff);
    let rounded = b.ins().iadd(u, bias);
    let rounded = b.ins().ushr_imm_s(rounded, 16);
    let quiet = b.ins().ushr_imm_s(u, 16);
    let quiet = b.ins().bor_imm_s(quiet, 0x40);
    let abs = b.ins().band_imm_s(u, 0x7fff_ffff);
    let is_nan = b
        .ins()
        .icmp_imm_s(IntCC::UnsignedGreaterThan, abs, 0x7f80_0000);
    let r = b.ins().select(is_nan, quiet, rounded);
    b.ins().ireduce(types::I16, r)
}

/// f16 bits to f32.
pub(super) fn f16_to_f32(b: &mut FunctionBuilder, h: Value) -> Value {
    let w = b.ins().uextend(types::I32, h);
    let sign = b.ins().band_imm_s(w, 0x8000);
    let sign = b.ins().ishl_imm_s(sign, 16);
    let mag = b.ins().band_imm_s(w, 0x7fff);
    // Normals and subnormals: the magnitude bits placed in an f32 and scaled by 2^112, exactly.
    let shifted = b.ins().ishl_imm_s(mag, 13);
    let f = bits_to_f32(b, shifted);
    let scale = b.ins().f32const(f32::from_bits(0x7780_0000)); // 2^112
    let finite = b.ins().fmul(f, scale);
    let finite = f32_to_bits(b, finite);
    // Infinity and NaN: all-ones exponent, payload kept, NaNs made quiet.
    let man = b.ins().band_imm_s(w, 0x3ff);
    let man_bits = b.ins().ishl_imm_s(man, 13);
    let is_nan = b.ins().icmp_imm_s(IntCC::NotEqual, man, 0);
    let quiet = b.ins().iconst(types::I32, 0x7fc0_0000);
    let inf = b.ins().iconst(types::I32, 0x7f80_0000);
    let top = b.ins().select(is_nan, quiet, inf);
    let special = b.ins().bor(top, man_bits);
    let is_special = b
        .ins()
        .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, mag, 0x7c00);
    let r = b.ins().select(is_special, special, finite);
    let r = b.ins().bor(r, sign);
    bits_to_f32(b, r)
}

/// f32 to f16 bits.
pub(super) fn f32_to_f16(b: &mut FunctionBuilder, x: Value) -> Value {
    let u = f32_to_bits(b, x);
    let sign = b.ins().ushr_imm_s(u, 16);
    let sign = b.ins().band_imm_s(sign, 0x8000);
    let a = b.ins().band_imm_s(u, 0x7fff_ffff);
    // Normal results: rebias the exponent and round the 13 dropped bits to nearest even.
    let lsb = b.ins().ushr_imm_s(a, 13);
    let lsb = b.ins().band_imm_s(lsb, 1);
    let bias = b.ins().iadd_imm_s(lsb, 0xfff);
    let normal = b.ins().iadd(a, bias);
    let normal = b.ins().ushr_imm_s(normal, 13);
    let normal = b.ins().iadd_imm_s(normal, -(112 << 10));
    // Below 2^-14 the f16 bits are |x| * 2^24 rounded to an integer (up to 0x400, the smallest
    // normal); the scaling is exact and `nearest` rounds ties to even.
    let af = bits_to_f32(b, a);
    let scale = b.ins().f32const(16_777_216.0);
    let scaled = b.ins().fmul(af, scale);
    let scaled = b.ins().nearest(scaled);
    let sub = b.ins().fcvt_to_uint_sat(types::I32, scaled);
    // NaN: quiet, top payload bits kept; overflow (>= 65520 after rounding) and inf: infinity.
    let man = b.ins().band_imm_s(a, 0x7f_ffff);
    let man = b.ins().ushr_imm_s(man, 13);
    let nan = b.ins().bor_imm_s(man, 0x7e00);
    let inf = b.ins().iconst(types::I32, 0x7c00);

    let is_sub = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, a, 0x3880_0000);
    let r = b.ins().select(is_sub, sub, normal);
    let is_big = b
        .ins()
        .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, a, 0x477f_f000);
    let r = b.ins().select(is_big, inf, r);
    let is_nan = b
        .ins()
        .icmp_imm_s(IntCC::UnsignedGreaterThan, a, 0x7f80_0000);
    let r = b.ins().select(is_nan, nan, r);
    let r = b.ins().bor(r, sign);
    b.ins().ireduce(types::I16, r)
}
