//! The checks of the builtins that are a few lines each (the table in `builtin_table` names
//! them); `load`, `store`, `dot` and the math functions are in `builtins`.

use super::builtins::Args;
use super::checker::{shape_text, Checker, R};
use super::rules::broadcasts_to;
use super::value::{Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{BinaryOp, ConstValue, Op, ReduceOp, Type, UnaryOp};
use crate::syntax::ast::BinOp;
use crate::types::DType;

impl Checker<'_> {
    /// `program_id(axis)`, `num_programs(axis)`.
    pub(super) fn check_grid_index(&mut self, a: &Args, name: &str) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(1, 1)?;
        let (v, s) = a.arg(0);
        let axis = self.const_int(&v, s, "the grid axis")?;
        if !(0..3).contains(&axis) {
            return Err(Diagnostic::new(
                s,
                format!("grid axis must be 0, 1 or 2, found {axis}"),
            ));
        }
        let op = if name == "program_id" {
            Op::ProgramId(axis as u8)
        } else {
            Op::NumPrograms(axis as u8)
        };
        Ok(Val::tile(self.b.push(op, Type::scalar(DType::I32))))
    }

    /// `range(N)`.
    pub(super) fn check_range(&mut self, a: &Args, _name: &str) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(1, 1)?;
        let (v, s) = a.arg(0);
        let n = self.const_int(&v, s, "the length of `range`")?;
        let n = self.tile_dim(n, s)?;
        Ok(Val::tile(
            self.b.push(Op::Range(n), Type::tile(DType::I32, &[n])),
        ))
    }

    /// `zeros(shape, T)`, `full(shape, value, T)`.
    pub(super) fn check_fill(&mut self, a: &Args, name: &str) -> R<Val> {
        let span = a.span;
        a.expect_named(&[])?;
        let n = if name == "zeros" { 2 } else { 3 };
        a.expect_count(n, n)?;
        let shape = self.shape_arg(a.arg(0))?;
        let (dv, ds) = a.arg(n - 1);
        let Val::DType(d) = dv else {
            return Err(Diagnostic::new(
                ds,
                format!(
                    "expected an element type such as `f32`, found {}",
                    self.describe(&dv)
                ),
            ));
        };
        let fill = if name == "zeros" {
            Val::Const(Const::weak_int(0))
        } else {
            a.arg(1).0
        };
        let (fs, fspan) = (fill, a.positional.get(1).map_or(span, |p| p.1));
        match fs {
            Val::Const(c) => Ok(Val::tile(self.materialize(c, d, &shape))),
            other => {
                let v = self.exact_operand(&other, d, fspan)?;
                let v = self.broadcast_value(v, &shape, fspan, "the fill value")?;
                Ok(Val::tile(v))
            }
        }
    }

    /// `where(c, a, b)`.
    pub(super) fn check_where(&mut self, a: &Args, _name: &str) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(3, 3)?;
        let ((c, sc), (x, sx), (y, sy)) = (a.arg(0), a.arg(1), a.arg(2));
        if let Val::Const(Const {
            value: ConstValue::Bool(b),
            ..
        }) = c
        {
            return Ok(if b { x } else { y });
        }
        if self.dtype_of(&c) != Some(DType::Bool) {
            return Err(Diagnostic::new(
                sc,
                format!(
                    "the condition of `where` must be `bool`, found {}",
                    self.describe(&c)
                ),
            ));
        }
        let d = self.join_dtypes(&x, &y, sx.to(sy))?;
        let shape = self.common_shape(&[(&c, sc), (&x, sx), (&y, sy)])?;
        let cv = self.operand(&c, DType::Bool, &shape, sc, "the condition")?;
        let xv = self.operand(&x, d, &shape, sx, "the first value")?;
        let yv = self.operand(&y, d, &shape, sy, "the second value")?;
        Ok(Val::tile(
            self.b.push(Op::Select(cv, xv, yv), Type::tile(d, &shape)),
        ))
    }

    /// `fma(a, b, c)`.
    pub(super) fn check_fma(&mut self, a: &Args, _name: &str) -> R<Val> {
        let span = a.span;
        a.expect_named(&[])?;
        a.expect_count(3, 3)?;
        let ((x, sx), (y, sy), (z, sz)) = (a.arg(0), a.arg(1), a.arg(2));
        let d = self.join_dtypes(&x, &y, sx.to(sy))?;
        let d = self.join_dtypes(
            &Val::Const(Const {
                value: ConstValue::Float(0.0),
                dtype: d,
                weak: false,
            }),
            &z,
            sx.to(sz),
        )?;
        if !d.is_float() {
            return Err(Diagnostic::new(
                span,
                format!("`fma` needs float operands, found `{d}`"),
            ));
        }
        let shape = self.common_shape(&[(&x, sx), (&y, sy), (&z, sz)])?;
        let xv = self.operand(&x, d, &shape, sx, "the first operand")?;
        let yv = self.operand(&y, d, &shape, sy, "the second operand")?;
        let zv = self.operand(&z, d, &shape, sz, "the third operand")?;
        Ok(Val::tile(
            self.b.push(Op::Fma(xv, yv, zv), Type::tile(d, &shape)),
        ))
    }

    /// Elementwise `max(a, b)`, `min(a, b)`.
    pub(super) fn check_min_max(&mut self, a: &Args, name: &str) -> R<Val> {
        let span = a.span;
        a.expect_named(&[])?;
        let ((x, sx), (y, sy)) = (a.arg(0), a.arg(1));
        if let (Val::Const(p), Val::Const(q)) = (&x, &y) {
            let lt = super::fold::fold_binary(BinOp::Lt, *p, *q)
                .map_err(|m| Diagnostic::new(span, m))?;
            let p_smaller = lt.value == ConstValue::Bool(true);
            return Ok(if (name == "min") == p_smaller { x } else { y });
        }
        let d = self.join_dtypes(&x, &y, span)?;
        if d == DType::Bool {
            return Err(Diagnostic::new(
                span,
                format!("`{name}` needs numbers, found `bool`"),
            ));
        }
        let shape = self.common_shape(&[(&x, sx), (&y, sy)])?;
        let xv = self.operand(&x, d, &shape, sx, "the first operand")?;
        let yv = self.operand(&y, d, &shape, sy, "the second operand")?;
        let op = if name == "max" {
            BinaryOp::Max
        } else {
            BinaryOp::Min
        };
        Ok(Val::tile(
            self.b.push(Op::Binary(op, xv, yv), Type::tile(d, &shape)),
        ))
    }

    /// `sum`, `max`, `min`, `argmax` of one tile, over all axes or `axis: k`.
    pub(super) fn check_reduction(&mut self, a: &Args, name: &str) -> R<Val> {
        a.expect_named(&["axis"])?;
        a.expect_count(1, 1)?;
        let op = match name {
            "sum" => ReduceOp::Sum,
            "max" => ReduceOp::Max,
            "min" => ReduceOp::Min,
            _ => ReduceOp::Argmax,
        };
        let axis = match a.named("axis") {
            Some((v, s)) => Some((self.const_int(&v, s, "the reduction axis")?, s)),
            None => None,
        };
        self.reduce(op, a.arg(0), axis, name)
    }

    /// `abs(x)`, of floats and integers.
    pub(super) fn check_abs(&mut self, a: &Args, _name: &str) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(1, 1)?;
        let (v, s) = a.arg(0);
        if let Val::Const(c) = v {
            let f = super::fold::fold_unary(crate::syntax::ast::UnOp::Neg, c)
                .map_err(|m| Diagnostic::new(s, m))?;
            return Ok(Val::Const(if c.as_f64() < 0.0 { f } else { c }));
        }
        let value = self.number_tile(&v, s, "abs")?;
        let ty = self.ty(value);
        if ty.dtype() == Some(DType::Bool) {
            return Err(Diagnostic::new(s, "`abs` needs a number, found `bool`"));
        }
        Ok(Val::tile(self.b.push(Op::Unary(UnaryOp::Abs, value), ty)))
    }

    /// `reshape(x, shape)`, `broadcast(x, shape)`.
    pub(super) fn check_reshape(&mut self, a: &Args, name: &str) -> R<Val> {
        let span = a.span;
        a.expect_named(&[])?;
        a.expect_count(2, 2)?;
        let (v, s) = a.arg(0);
        let shape = self.shape_arg(a.arg(1))?;
        let (value, mutable_ptr) = self.any_tile(v, s)?;
        let ty = self.ty(value);
        if name == "reshape" {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            if n != ty.numel() {
                return Err(Diagnostic::new(
                    span,
                    format!(
                        "cannot reshape {} ({} elements) to {} ({n} elements)",
                        shape_text(&ty.shape),
                        ty.numel(),
                        shape_text(&shape)
                    ),
                ));
            }
            let r = self.b.push(Op::Reshape(value), ty.with_shape(&shape));
            return Ok(Val::Tile {
                value: r,
                mutable_ptr,
            });
        }
        if !broadcasts_to(&ty.shape, &shape) {
            return Err(Diagnostic::new(
                span,
                format!(
                    "cannot broadcast {} to {}",
                    shape_text(&ty.shape),
                    shape_text(&shape)
                ),
            ));
        }
        let r = self.broadcast_value(value, &shape, s, "the tile")?;
        Ok(Val::Tile {
            value: r,
            mutable_ptr,
        })
    }

    /// `trans(x)` of a 2-D tile.
    pub(super) fn check_trans(&mut self, a: &Args, _name: &str) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(1, 1)?;
        let (v, s) = a.arg(0);
        let (value, mutable_ptr) = self.any_tile(v, s)?;
        let ty = self.ty(value);
        if ty.shape.len() != 2 {
            return Err(Diagnostic::new(
                s,
                format!(
                    "`trans` needs a 2-D tile, found shape {}",
                    shape_text(&ty.shape)
                ),
            ));
        }
        let r = self
            .b
            .push(Op::Trans(value), ty.with_shape(&[ty.shape[1], ty.shape[0]]));
        Ok(Val::Tile {
            value: r,
            mutable_ptr,
        })
    }

    /// `cdiv(a, b)`.
    pub(super) fn check_cdiv(&mut self, a: &Args, _name: &str) -> R<Val> {
        let span = a.span;
        a.expect_named(&[])?;
        a.expect_count(2, 2)?;
        let ((x, sx), (y, sy)) = (a.arg(0), a.arg(1));
        let d = self.join_dtypes(&x, &y, span)?;
        if !d.is_int() {
            return Err(Diagnostic::new(
                span,
                format!("`cdiv` needs integers, found `{d}`"),
            ));
        }
        let one = Val::Const(Const::weak_int(1));
        let t = self.binary(BinOp::Add, (x, sx), (y.clone(), sy), span)?;
        let t = self.binary(BinOp::Sub, (t, span), (one, span), span)?;
        self.binary(BinOp::Div, (t, span), (y, sy), span)
    }
}
