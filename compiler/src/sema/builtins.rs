//! Calls: builtins (`load`, `sum`, `dot`, ...) and inlined helper functions.

use super::checker::{shape_text, Checker, R};
use super::rules::{broadcasts_to, is_pow2, too_many_elems, MAX_TILE_ELEMS};
use super::type_params::ResolvedType;
use super::value::{Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{BinaryOp, ConstValue, Elem, Op, ReduceOp, Type, UnaryOp, Value};
use crate::syntax::ast::{Arg, BinOp, Ident, Span};
use crate::types::DType;

/// The arguments of one call, checked, with their spans.
struct Args {
    callee: String,
    span: Span,
    positional: Vec<(Val, Span)>,
    named: Vec<(String, Val, Span)>,
}

impl Args {
    fn expect_count(&self, min: usize, max: usize) -> R<()> {
        let n = self.positional.len();
        if n < min || n > max {
            let want = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            let s = if max == 1 { "" } else { "s" };
            return Err(Diagnostic::new(
                self.span,
                format!(
                    "`{}` takes {want} argument{s}, but {n} were given",
                    self.callee
                ),
            ));
        }
        Ok(())
    }

    fn expect_named(&self, allowed: &[&str]) -> R<()> {
        for (name, _, span) in &self.named {
            if !allowed.contains(&name.as_str()) {
                let hint = if allowed.is_empty() {
                    "it takes no named arguments".to_string()
                } else {
                    format!("it takes `{}:`", allowed.join(":`, `"))
                };
                return Err(Diagnostic::new(
                    *span,
                    format!("`{}` has no argument named `{name}`; {hint}", self.callee),
                ));
            }
        }
        Ok(())
    }

    fn named(&self, name: &str) -> Option<(Val, Span)> {
        self.named
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, s)| (v.clone(), *s))
    }

    fn arg(&self, i: usize) -> (Val, Span) {
        self.positional[i].clone()
    }
}

impl Checker<'_> {
    pub fn call(&mut self, callee: &Ident, args: &[Arg], span: Span) -> R<Val> {
        let mut checked = Args {
            callee: callee.name.clone(),
            span,
            positional: vec![],
            named: vec![],
        };
        for a in args {
            let v = self.check_expr(&a.value)?;
            match &a.name {
                Some(n) => {
                    if checked.named.iter().any(|(m, _, _)| *m == n.name) {
                        return Err(Diagnostic::new(
                            n.span,
                            format!("argument `{}` given twice", n.name),
                        ));
                    }
                    checked.named.push((n.name.clone(), v, a.value.span))
                }
                None if !checked.named.is_empty() => {
                    return Err(Diagnostic::new(
                        a.value.span,
                        "positional arguments must come before named ones",
                    ))
                }
                None => checked.positional.push((v, a.value.span)),
            }
        }
        if let Some(f) = self.fns.get(callee.name.as_str()).copied() {
            return self.inline_helper(f, checked.positional, checked.named, span);
        }
        let a = checked;
        let name = callee.name.as_str();
        if let Some(u) = unary_math(name) {
            a.expect_named(&[])?;
            a.expect_count(1, 1)?;
            return self.math1(u, a.arg(0), name);
        }
        match name {
            "program_id" | "num_programs" => {
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
            "range" => {
                a.expect_named(&[])?;
                a.expect_count(1, 1)?;
                let (v, s) = a.arg(0);
                let n = self.const_int(&v, s, "the length of `range`")?;
                let n = self.tile_dim(n, s)?;
                Ok(Val::tile(
                    self.b.push(Op::Range(n), Type::tile(DType::I32, &[n])),
                ))
            }
            "zeros" | "full" => {
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
            "load" => self.load(&a),
            "store" | "atomic_add" => self.store(&a, name == "atomic_add"),
            "where" => {
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
            "fma" => {
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
            "max" | "min" if a.positional.len() == 2 => {
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
            "sum" | "max" | "min" | "argmax" => {
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
            "abs" => {
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
            "reshape" | "broadcast" => {
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
            "trans" => {
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
            "dot" => self.dot(&a),
            "cdiv" => {
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
            _ => {
                let mut d = Diagnostic::new(callee.span, format!("unknown function `{name}`"))
                    .with_label("not a builtin or a helper in this file");
                if name == "maximum" || name == "minimum" {
                    d = d.with_note(format!(
                        "elementwise {} is written `{}(a, b)`",
                        &name[..3],
                        &name[..3]
                    ));
                }
                Err(d)
            }
        }
    }

    /// A tile dimension: a positive power of two, not too large.
    pub fn tile_dim(&self, n: i64, span: Span) -> R<u32> {
        if !is_pow2(n) || n as u64 > MAX_TILE_ELEMS {
            return Err(Diagnostic::new(
                span,
                format!(
                    "tile dimensions must be powers of two from 1 to {MAX_TILE_ELEMS}, found {n}"
                ),
            ));
        }
        Ok(n as u32)
    }

    /// `[A, B]` or a single constant.
    fn shape_arg(&self, (v, span): (Val, Span)) -> R<Vec<u32>> {
        let dims = match v {
            Val::List(items) => items,
            other => vec![(other, span)],
        };
        let shape = dims
            .iter()
            .map(|(d, s)| {
                let n = self.const_int(d, *s, "a tile dimension")?;
                self.tile_dim(n, *s)
            })
            .collect::<R<Vec<u32>>>()?;
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        if numel > MAX_TILE_ELEMS {
            return Err(Diagnostic::new(
                span,
                format!(
                    "a tile may hold at most {MAX_TILE_ELEMS} elements, this one holds {numel}"
                ),
            ));
        }
        Ok(shape)
    }

    fn any_tile(&mut self, v: Val, span: Span) -> R<(Value, bool)> {
        match v {
            Val::Tile { value, mutable_ptr } => Ok((value, mutable_ptr)),
            Val::Const(c) => Ok((self.materialize(c, c.dtype, &[]), false)),
            other => Err(Diagnostic::new(
                span,
                format!("expected a tile, found {}", self.describe(&other)),
            )),
        }
    }

    fn number_tile(&mut self, v: &Val, span: Span, what: &str) -> R<Value> {
        match v {
            Val::Tile { value, .. } if self.b.ty(*value).dtype().is_some() => Ok(*value),
            Val::Const(c) => Ok(self.materialize(*c, c.dtype, &[])),
            other => Err(Diagnostic::new(
                span,
                format!("`{what}` needs a number, found {}", self.describe(other)),
            )),
        }
    }

    /// An operand that must already have element type `d` (no implicit conversion except for
    /// weak literals).
    fn exact_operand(&mut self, v: &Val, d: DType, span: Span) -> R<Value> {
        if let Val::Const(c) = v {
            if c.weak || c.dtype == d {
                return Ok(self.materialize(*c, d, &[]));
            }
        }
        if self.dtype_of(v) != Some(d) {
            return Err(Diagnostic::new(
                span,
                format!(
                    "expected a `{d}` value, found {}; cast it with `as {d}`",
                    self.describe(v)
                ),
            ));
        }
        self.scalar_operand(v, d, span)
    }

    fn math1(&mut self, u: UnaryOp, (v, s): (Val, Span), name: &str) -> R<Val> {
        if let Val::Const(c) = v {
            if c.dtype.is_float() || c.weak {
                let x = c.as_f64();
                let r = match u {
                    UnaryOp::Exp => x.exp(),
                    UnaryOp::Exp2 => x.exp2(),
                    UnaryOp::Log => x.ln(),
                    UnaryOp::Log2 => x.log2(),
                    UnaryOp::Sqrt => x.sqrt(),
                    UnaryOp::Rsqrt => 1.0 / x.sqrt(),
                    UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                    UnaryOp::Tanh => x.tanh(),
                    UnaryOp::Sin => x.sin(),
                    UnaryOp::Cos => x.cos(),
                    _ => unreachable!("only transcendental functions here"),
                };
                let dtype = if c.dtype.is_float() {
                    c.dtype
                } else {
                    DType::F32
                };
                return Ok(Val::Const(
                    Const {
                        value: ConstValue::Float(r),
                        dtype,
                        weak: c.weak,
                    }
                    .cast(dtype),
                )
                .map_weak(c.weak));
            }
        }
        let value = self.number_tile(&v, s, name)?;
        let ty = self.ty(value);
        if !ty.dtype().is_some_and(DType::is_float) {
            return Err(Diagnostic::new(
                s,
                format!(
                    "`{name}` needs a float tile, found {}; cast it with `as f32`",
                    self.describe(&v)
                ),
            ));
        }
        Ok(Val::tile(self.b.push(Op::Unary(u, value), ty)))
    }

    fn reduce(
        &mut self,
        op: ReduceOp,
        (v, s): (Val, Span),
        axis: Option<(i64, Span)>,
        name: &str,
    ) -> R<Val> {
        let Val::Tile { value, .. } = v else {
            return Err(Diagnostic::new(
                s,
                format!("`{name}` reduces a tile, found {}", self.describe(&v)),
            ));
        };
        let ty = self.ty(value);
        let d = match ty.elem {
            Elem::Scalar(d) if d != DType::Bool => d,
            _ => {
                return Err(Diagnostic::new(
                    s,
                    format!(
                        "`{name}` needs a tile of numbers, found {}",
                        self.describe(&v)
                    ),
                ))
            }
        };
        if ty.shape.is_empty() {
            return Err(Diagnostic::new(
                s,
                format!("`{name}` of a scalar: there is nothing to reduce"),
            ));
        }
        let (value, axis) = match axis {
            Some((a, span)) => {
                if a < 0 || a as usize >= ty.shape.len() {
                    return Err(Diagnostic::new(
                        span,
                        format!(
                            "axis {a} is out of range for a tile of shape {}",
                            shape_text(&ty.shape)
                        ),
                    ));
                }
                (value, a as u32)
            }
            None if ty.shape.len() == 1 => (value, 0),
            None => (
                self.b
                    .push(Op::Reshape(value), ty.with_shape(&[ty.numel() as u32])),
                0,
            ),
        };
        let mut shape = self.ty(value).shape.clone();
        shape.remove(axis as usize);
        // Sums of 16-bit floats accumulate in f32, then round once.
        let widen = op == ReduceOp::Sum && matches!(d, DType::Bf16 | DType::F16);
        let src = if widen {
            let t = self.ty(value).with_dtype(DType::F32);
            self.b.push(Op::Cast(value), t)
        } else {
            value
        };
        let rd = match op {
            ReduceOp::Argmax => DType::I32,
            _ if widen => DType::F32,
            _ => d,
        };
        let r = self.b.push(
            Op::Reduce {
                op,
                value: src,
                axis,
            },
            Type::tile(rd, &shape),
        );
        let r = if widen {
            self.b.push(Op::Cast(r), Type::tile(d, &shape))
        } else {
            r
        };
        Ok(Val::tile(r))
    }

    fn pointer_arg(&mut self, (v, s): (Val, Span), what: &str) -> R<(Value, DType, bool)> {
        if let Val::Tile { value, mutable_ptr } = v {
            if let Elem::Ptr(d) = self.b.ty(value).elem {
                return Ok((value, d, mutable_ptr));
            }
        }
        Err(Diagnostic::new(
            s,
            format!("{what} needs a pointer, found {}", self.describe(&v)),
        ))
    }

    fn mask_arg(&mut self, a: &Args) -> R<Option<(Val, Span)>> {
        match a.named("mask") {
            Some((m, s)) => {
                if self.dtype_of(&m) != Some(DType::Bool) {
                    return Err(Diagnostic::new(
                        s,
                        format!("a mask must be a `bool` tile, found {}", self.describe(&m)),
                    ));
                }
                Ok(Some((m, s)))
            }
            None => Ok(None),
        }
    }

    fn load(&mut self, a: &Args) -> R<Val> {
        a.expect_named(&["mask", "other"])?;
        a.expect_count(1, 1)?;
        let (pv, ps) = a.arg(0);
        let (ptr, d, _) = self.pointer_arg((pv.clone(), ps), "`load`")?;
        let mask = self.mask_arg(a)?;
        let other = a.named("other");
        if let (Some((_, other_span)), None) = (&other, &mask) {
            return Err(Diagnostic::new(
                *other_span,
                "`other:` only makes sense with a `mask:`",
            ));
        }
        let mut shaped: Vec<(&Val, Span)> = vec![(&pv, ps)];
        if let Some((m, s)) = &mask {
            shaped.push((m, *s));
        }
        let shape = self.common_shape_or(&shaped, "mask shape mismatch")?;
        let ptr = self.broadcast_value(ptr, &shape, ps, "the pointer")?;
        let mask = match mask {
            Some((m, s)) => Some(self.operand(&m, DType::Bool, &shape, s, "the mask")?),
            None => None,
        };
        let other = match other {
            Some((o, s)) => {
                let v = self.exact_operand(&o, d, s)?;
                Some(self.broadcast_value(v, &shape, s, "`other`")?)
            }
            None => None,
        };
        let r = self
            .b
            .push(Op::Load { ptr, mask, other }, Type::tile(d, &shape));
        Ok(Val::tile(r))
    }

    fn store(&mut self, a: &Args, atomic: bool) -> R<Val> {
        let what = if atomic { "`atomic_add`" } else { "`store`" };
        a.expect_named(&["mask"])?;
        a.expect_count(2, 2)?;
        let (pv, ps) = a.arg(0);
        let (vv, vs) = a.arg(1);
        let (ptr, d, mutable) = self.pointer_arg((pv.clone(), ps), what)?;
        if !mutable {
            return Err(
                Diagnostic::new(ps, format!("{what} through a read-only pointer"))
                    .with_label(format!("points to `{d}` read-only"))
                    .with_note("declare the parameter `*mut` to write through it"),
            );
        }
        if atomic && !matches!(d, DType::F32 | DType::I32) {
            return Err(Diagnostic::new(
                ps,
                format!("`atomic_add` supports `f32` and `i32`, not `{d}`"),
            ));
        }
        let mask = self.mask_arg(a)?;
        let mut shaped: Vec<(&Val, Span)> = vec![(&pv, ps), (&vv, vs)];
        if let Some((m, s)) = &mask {
            shaped.push((m, *s));
        }
        let shape = self.common_shape(&shaped)?;
        if shape != self.shape_of(&pv) {
            return Err(Diagnostic::new(vs, format!(
                "{what} of a {} value through {} pointers: the value would be written to the same address more than once",
                shape_text(&shape), shape_text(&self.shape_of(&pv)))));
        }
        let value = self.exact_operand(&vv, d, vs)?;
        let value = self.broadcast_value(value, &shape, vs, "the value")?;
        let mask = match mask {
            Some((m, s)) => Some(self.operand(&m, DType::Bool, &shape, s, "the mask")?),
            None => None,
        };
        let op = if atomic {
            Op::AtomicAdd { ptr, value, mask }
        } else {
            Op::Store { ptr, value, mask }
        };
        self.b.push_effect(op);
        Ok(Val::Unit)
    }

    fn dot(&mut self, a: &Args) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(2, 3)?;
        let ((x, sx), (y, sy)) = (a.arg(0), a.arg(1));
        let xs = self.shape_of(&x);
        let ys = self.shape_of(&y);
        if xs.len() != 2 || ys.len() != 2 {
            return Err(Diagnostic::new(
                if xs.len() != 2 { sx } else { sy },
                format!(
                    "`dot` needs 2-D tiles, found shapes {} and {}",
                    shape_text(&xs),
                    shape_text(&ys)
                ),
            ));
        }
        if xs[1] != ys[0] {
            return Err(Diagnostic::new(
                a.span,
                format!(
                    "`dot` shape mismatch: {} @ {} (inner dimensions {} and {} differ)",
                    shape_text(&xs),
                    shape_text(&ys),
                    xs[1],
                    ys[0]
                ),
            ));
        }
        let (dx, dy) = (self.dtype_of(&x), self.dtype_of(&y));
        if dx != dy || !dx.is_some_and(DType::is_float) {
            return Err(Diagnostic::new(
                a.span,
                format!(
                    "`dot` needs two float tiles of one type, found {} and {}",
                    self.describe(&x),
                    self.describe(&y)
                ),
            ));
        }
        let out = [xs[0], ys[1]];
        if let Some(message) = too_many_elems(&out) {
            return Err(Diagnostic::new(
                a.span,
                format!("the result of `dot`: {message}"),
            ));
        }
        let acc = match a.positional.get(2) {
            Some((acc, s)) => {
                if self.dtype_of(acc) != Some(DType::F32) || self.shape_of(acc) != out {
                    return Err(Diagnostic::new(
                        *s,
                        format!(
                            "the accumulator of `dot` must be `<{} x {} x f32>`, found {}",
                            out[0],
                            out[1],
                            self.describe(acc)
                        ),
                    ));
                }
                self.scalar_operand(acc, DType::F32, *s)?
            }
            None => self.materialize(Const::weak_float(0.0), DType::F32, &out),
        };
        let (Val::Tile { value: av, .. }, Val::Tile { value: bv, .. }) = (x, y) else {
            unreachable!()
        };
        Ok(Val::tile(self.b.push(
            Op::Dot { a: av, b: bv, acc },
            Type::tile(DType::F32, &out),
        )))
    }

    /// Inlines a helper: its parameters are bound to the arguments in a fresh frame that sees no
    /// caller locals, and its body's tail expression is the result.
    fn inline_helper(
        &mut self,
        f: &crate::syntax::ast::Function,
        args: Vec<(Val, Span)>,
        named: Vec<(String, Val, Span)>,
        span: Span,
    ) -> R<Val> {
        if let Some((_, _, s)) = named.first() {
            return Err(Diagnostic::new(
                *s,
                format!("helper `{}` takes only positional arguments", f.name.name),
            ));
        }
        if args.len() != f.params.len() {
            return Err(Diagnostic::new(
                span,
                format!(
                    "`{}` takes {} argument{}, but {} were given",
                    f.name.name,
                    f.params.len(),
                    if f.params.len() == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
        }
        if self.call_stack.contains(&f.name.name) || self.call_stack.len() > 64 {
            return Err(Diagnostic::new(
                span,
                format!(
                    "helper `{}` calls itself; helpers are inlined and cannot recurse",
                    f.name.name
                ),
            ));
        }
        let mut bound = vec![];
        for (p, (v, s)) in f.params.iter().zip(args) {
            let v = match &p.ty {
                Some(t) => {
                    let ResolvedType::Scalar(d) = self.resolve_type(t)? else {
                        return Err(Diagnostic::new(
                            t.span,
                            "helper parameters may only constrain the element type",
                        ));
                    };
                    match v {
                        Val::Const(c) if c.weak || c.dtype == d => Val::Const(c.cast(d)),
                        other if self.dtype_of(&other) == Some(d) => other,
                        // Widened as a binary operation widens its operands.
                        other
                            if self
                                .dtype_of(&other)
                                .is_some_and(|from| super::rules::promote(from, d) == Ok(d)) =>
                        {
                            Val::tile(self.scalar_operand(&other, d, s)?)
                        }
                        other => {
                            return Err(Diagnostic::new(
                                s,
                                format!(
                                    "`{}` expects `{d}` for `{}`, found {}; cast it with `as {d}`",
                                    f.name.name,
                                    p.name.name,
                                    self.describe(&other)
                                ),
                            ))
                        }
                    }
                }
                None => v,
            };
            bound.push((p.name.name.clone(), v));
        }
        let saved = std::mem::replace(&mut self.scopes, vec![Default::default()]);
        self.call_stack.push(f.name.name.clone());
        for (n, v) in bound {
            self.bind(&n, v, false);
        }
        let result = self.check_block_value(&f.body);
        self.call_stack.pop();
        self.scopes = saved;
        result.map_err(|d| d.with_note(format!("in helper `{}`, inlined here", f.name.name)))
    }
}

impl Val {
    fn map_weak(self, weak: bool) -> Val {
        match self {
            Val::Const(c) => Val::Const(Const { weak, ..c }),
            other => other,
        }
    }
}

fn unary_math(name: &str) -> Option<UnaryOp> {
    Some(match name {
        "exp" => UnaryOp::Exp,
        "exp2" => UnaryOp::Exp2,
        "log" => UnaryOp::Log,
        "log2" => UnaryOp::Log2,
        "sqrt" => UnaryOp::Sqrt,
        "rsqrt" => UnaryOp::Rsqrt,
        "sigmoid" => UnaryOp::Sigmoid,
        "tanh" => UnaryOp::Tanh,
        "sin" => UnaryOp::Sin,
        "cos" => UnaryOp::Cos,
        _ => return None,
    })
}
