//! What an expression evaluates to during checking.

use crate::ir::{ConstValue, Type, Value};
use crate::syntax::ast::Span;
use crate::types::DType;

/// The result of checking an expression.
#[derive(Clone, Debug)]
pub enum Val {
    /// Known at compile time. `weak` constants (literals and what is folded from only literals)
    /// take the element type of the other operand.
    Const(Const),
    /// A value in the IR; `mutable_ptr` is set on pointer tiles derived from a `*mut` parameter.
    Tile { value: Value, mutable_ptr: bool },
    /// A type name used as an argument: `zeros([16], f32)`.
    DType(DType),
    /// `[a, b]`, for shapes.
    List(Vec<(Val, Span)>),
    /// What `store(...)` and friends return.
    Unit,
}

/// A compile-time scalar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Const {
    pub value: ConstValue,
    pub dtype: DType,
    pub weak: bool,
}

impl Const {
    pub fn weak_int(v: i64) -> Const {
        Const {
            value: ConstValue::Int(v),
            dtype: DType::I32,
            weak: true,
        }
    }

    pub fn weak_float(v: f64) -> Const {
        Const {
            value: ConstValue::Float(v),
            dtype: DType::F32,
            weak: true,
        }
    }

    pub fn boolean(v: bool) -> Const {
        Const {
            value: ConstValue::Bool(v),
            dtype: DType::Bool,
            weak: false,
        }
    }

    pub fn as_f64(&self) -> f64 {
        numeric(self.value)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            ConstValue::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value converted to `dtype` with the language's cast rules; `weak` is cleared.
    pub fn cast(&self, dtype: DType) -> Const {
        let value = match (self.value, dtype) {
            // Type parameters are bound as `Val::DType`, never as constants.
            (v @ ConstValue::DType(_), _) => v,
            (v, DType::Bool) => ConstValue::Bool(numeric(v) != 0.0),
            (ConstValue::Float(f), DType::I32) => ConstValue::Int(f as i32 as i64),
            (ConstValue::Float(f), DType::I64) => ConstValue::Int(f as i64),
            (ConstValue::Int(i), DType::I32) => ConstValue::Int(i as i32 as i64),
            (ConstValue::Int(i), DType::I64) => ConstValue::Int(i),
            (ConstValue::Bool(b), d) if d.is_int() => ConstValue::Int(b as i64),
            (v, d) => ConstValue::Float(round_float(numeric(v), d)),
        };
        Const {
            value,
            dtype,
            weak: false,
        }
    }
}

/// A numeric constant as an f64 (a type, which has no number, reads as NaN).
fn numeric(v: ConstValue) -> f64 {
    match v {
        ConstValue::Int(i) => i as f64,
        ConstValue::Float(f) => f,
        ConstValue::Bool(b) => b as i64 as f64,
        ConstValue::DType(_) => f64::NAN,
    }
}

/// Rounds an f64 to the nearest value representable in a float dtype (ties to even).
pub fn round_float(v: f64, d: DType) -> f64 {
    match d {
        DType::F32 => v as f32 as f64,
        DType::Bf16 => bf16_round(v as f32) as f64,
        DType::F16 => f16_round(v as f32) as f64,
        _ => v,
    }
}

fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb) & 0xffff_0000;
    f32::from_bits(rounded)
}

fn f16_round(x: f32) -> f32 {
    // Round through the f16 grid: 10 mantissa bits, exponents -14..15, subnormals below.
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let ax = x.abs() as f64;
    let exp = ax.log2().floor().max(-14.0);
    let ulp = 2f64.powf(exp - 10.0);
    let q = ax / ulp;
    let r = q.round();
    let r = if (q - q.floor() - 0.5).abs() < f64::EPSILON && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    };
    let v = r * ulp;
    let v = if v > 65504.0 { f64::INFINITY } else { v };
    (v as f32).copysign(x)
}

impl Val {
    pub fn tile(value: Value) -> Val {
        Val::Tile {
            value,
            mutable_ptr: false,
        }
    }
}

/// A shape or a type as users read it in messages: `f32`, `<1024 x f32>`.
pub fn describe(ty: &Type) -> String {
    if ty.shape.is_empty() {
        return ty.elem.to_string();
    }
    let dims: Vec<String> = ty.shape.iter().map(|d| d.to_string()).collect();
    format!("<{} x {}>", dims.join(" x "), ty.elem)
}
