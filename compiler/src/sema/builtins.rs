//! Calls: builtins (`load`, `sum`, `dot`, ...) and inlined helper functions.

use super::checker::{shape_text, Checker, R};
use super::rules::{is_pow2, too_many_elems, MAX_TILE_ELEMS};
use super::type_params::ResolvedType;
use super::value::{Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{ConstValue, Elem, Op, ReduceOp, Type, UnaryOp, Value};
use crate::syntax::ast::{Arg, Ident, Span};
use crate::types::DType;

/// The arguments of one call, checked, with their spans.
pub(super) struct Args {
    callee: String,
    pub(super) span: Span,
    pub(super) positional: Vec<(Val, Span)>,
    named: Vec<(String, Val, Span)>,
}

impl Args {
    pub(super) fn expect_count(&self, min: usize, max: usize) -> R<()> {
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

    pub(super) fn expect_named(&self, allowed: &[&str]) -> R<()> {
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

    pub(super) fn named(&self, name: &str) -> Option<(Val, Span)> {
        self.named
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, s)| (v.clone(), *s))
    }

    pub(super) fn arg(&self, i: usize) -> (Val, Span) {
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
        match super::builtin_table::lookup(name, &a) {
            Some(builtin) => (builtin.check)(self, &a, name),
            None => {
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
    pub(super) fn shape_arg(&self, (v, span): (Val, Span)) -> R<Vec<u32>> {
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

    pub(super) fn any_tile(&mut self, v: Val, span: Span) -> R<(Value, bool)> {
        match v {
            Val::Tile { value, mutable_ptr } => Ok((value, mutable_ptr)),
            Val::Const(c) => Ok((self.materialize(c, c.dtype, &[]), false)),
            other => Err(Diagnostic::new(
                span,
                format!("expected a tile, found {}", self.describe(&other)),
            )),
        }
    }

    pub(super) fn number_tile(&mut self, v: &Val, span: Span, what: &str) -> R<Value> {
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
    pub(super) fn exact_operand(&mut self, v: &Val, d: DType, span: Span) -> R<Value> {
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

    pub(super) fn math1(&mut self, u: UnaryOp, (v, s): (Val, Span), name: &str) -> R<Val> {
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

    pub(super) fn reduce(
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

    pub(super) fn load(&mut self, a: &Args) -> R<Val> {
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

    pub(super) fn store(&mut self, a: &Args, atomic: bool) -> R<Val> {
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

    pub(super) fn dot(&mut self, a: &Args) -> R<Val> {
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

pub(super) fn unary_math(name: &str) -> Option<UnaryOp> {
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
