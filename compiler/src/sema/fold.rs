//! Folding operators applied to compile-time constants.

use super::rules::promote;
use super::value::{round_float, Const};
use crate::ir::ConstValue;
use crate::syntax::ast::{BinOp, UnOp};
use crate::types::DType;

/// The element type two constants combine to: a weak literal yields to a typed constant; two
/// weak literals give `f32` if either is a float.
pub fn const_dtype(a: &Const, b: &Const) -> Result<DType, String> {
    match (a.weak, b.weak) {
        (true, true) => Ok(if a.dtype.is_float() || b.dtype.is_float() {
            DType::F32
        } else {
            a.dtype
        }),
        (true, false) => weak_joins(a, b.dtype),
        (false, true) => weak_joins(b, a.dtype),
        (false, false) => promote(a.dtype, b.dtype),
    }
}

/// The dtype a weak literal takes next to an operand of type `other`.
pub fn weak_joins(weak: &Const, other: DType) -> Result<DType, String> {
    match (weak.dtype.is_float(), other) {
        (true, d) if d.is_int() => Err(format!(
            "a float literal cannot be used with an integer `{other}` operand"
        )),
        (_, DType::Bool) if weak.dtype != DType::Bool => {
            Err("a number cannot be used with a `bool` operand".to_string())
        }
        _ => Ok(other),
    }
}

/// `a op b` at compile time.
pub fn fold_binary(op: BinOp, a: Const, b: Const) -> Result<Const, String> {
    let dtype = const_dtype(&a, &b)?;
    let weak = a.weak && b.weak;
    let (x, y) = (a.cast(dtype), b.cast(dtype));
    let cmp = |o: std::cmp::Ordering| -> bool {
        use std::cmp::Ordering::*;
        match op {
            BinOp::Eq => o == Equal,
            BinOp::Ne => o != Equal,
            BinOp::Lt => o == Less,
            BinOp::Le => o != Greater,
            BinOp::Gt => o == Greater,
            _ => o != Less,
        }
    };
    let is_cmp = matches!(
        op,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
    );
    let value = match (x.value, y.value) {
        (ConstValue::Int(i), ConstValue::Int(j)) => {
            if is_cmp {
                return Ok(Const::boolean(cmp(i.cmp(&j))));
            }
            let wrap = |v: i64| {
                if dtype == DType::I32 {
                    v as i32 as i64
                } else {
                    v
                }
            };
            let r = match op {
                BinOp::Add => i.wrapping_add(j),
                BinOp::Sub => i.wrapping_sub(j),
                BinOp::Mul => i.wrapping_mul(j),
                BinOp::Div | BinOp::Rem if j == 0 => {
                    return Err("division by zero in a constant expression".into())
                }
                BinOp::Div => i.wrapping_div(j),
                BinOp::Rem => i.wrapping_rem(j),
                BinOp::BitAnd => i & j,
                BinOp::BitOr => i | j,
                BinOp::BitXor => i ^ j,
                BinOp::Shl => i.wrapping_shl((j as u32) % dtype.bits()),
                BinOp::Shr => i.wrapping_shr((j as u32) % dtype.bits()),
                BinOp::LogicalAnd | BinOp::LogicalOr => {
                    return Err(format!("`{}` needs `bool` operands", op.symbol()))
                }
                _ => unreachable!("comparisons handled above"),
            };
            ConstValue::Int(wrap(r))
        }
        (ConstValue::Float(f), ConstValue::Float(g)) => {
            if is_cmp {
                return Ok(Const::boolean(match f.partial_cmp(&g) {
                    Some(o) => cmp(o),
                    None => op == BinOp::Ne,
                }));
            }
            let r = match op {
                BinOp::Add => f + g,
                BinOp::Sub => f - g,
                BinOp::Mul => f * g,
                BinOp::Div => f / g,
                BinOp::Rem => f % g,
                _ => {
                    return Err(format!(
                        "`{}` needs integer or `bool` operands",
                        op.symbol()
                    ))
                }
            };
            ConstValue::Float(if weak { r } else { round_float(r, dtype) })
        }
        (ConstValue::Bool(p), ConstValue::Bool(q)) => ConstValue::Bool(match op {
            BinOp::LogicalAnd | BinOp::BitAnd => p && q,
            BinOp::LogicalOr | BinOp::BitOr => p || q,
            BinOp::BitXor | BinOp::Ne => p != q,
            BinOp::Eq => p == q,
            _ => return Err(format!("`{}` does not apply to `bool`", op.symbol())),
        }),
        _ => {
            return Err(format!(
                "`{}` does not apply to these operands",
                op.symbol()
            ))
        }
    };
    Ok(Const { value, dtype, weak })
}

/// `op a` at compile time.
pub fn fold_unary(op: UnOp, a: Const) -> Result<Const, String> {
    let value = match (op, a.value) {
        (UnOp::Neg, ConstValue::Int(i)) => ConstValue::Int(if a.dtype == DType::I32 {
            (i as i32).wrapping_neg() as i64
        } else {
            i.wrapping_neg()
        }),
        (UnOp::Neg, ConstValue::Float(f)) => ConstValue::Float(-f),
        (UnOp::Not, ConstValue::Bool(b)) => ConstValue::Bool(!b),
        (UnOp::Not, ConstValue::Int(i)) => ConstValue::Int(!i),
        (UnOp::Neg, ConstValue::Bool(_)) => return Err("cannot negate a `bool`".into()),
        (UnOp::Not, ConstValue::Float(_)) => return Err("`!` does not apply to floats".into()),
        (_, ConstValue::DType(t)) => return Err(format!("the type `{t}` is not a value")),
    };
    Ok(Const { value, ..a })
}
