//! Small builders shared by the scalar and the four-lane code: constants of either shape, and a
//! select that takes a scalar condition or a lane mask.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// The integer `c` as a value of `ty`, in every lane if `ty` is a vector.
pub(super) fn int_const(b: &mut FunctionBuilder, ty: Type, c: i64) -> Value {
    if ty.is_vector() {
        let s = b.ins().iconst(ty.lane_type(), c);
        b.ins().splat(ty, s)
    } else {
        b.ins().iconst(ty, c)
    }
}

/// The float `c` as a value of `ty` (`f32` or `f32x4`).
pub(super) fn f32_const(b: &mut FunctionBuilder, ty: Type, c: f32) -> Value {
    let s = b.ins().f32const(c);
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

/// `cond ? x : y`: a `select` on a scalar condition, a `bitselect` on a lane mask (all ones or
/// all zeros per lane, as vector comparisons produce).
pub(super) fn choose(b: &mut FunctionBuilder, cond: Value, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    if !ty.is_vector() {
        return b.ins().select(cond, x, y);
    }
    let mask = if b.func.dfg.value_type(cond) == ty {
        cond
    } else {
        b.ins().bitcast(ty, MemFlagsData::new(), cond)
    };
    b.ins().bitselect(mask, x, y)
}
