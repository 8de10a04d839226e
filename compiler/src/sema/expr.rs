//! Expressions: literals, names, operators, casts, indexing.

use super::checker::{shape_text, Checker, R};
use super::fold::{fold_binary, fold_unary, weak_joins};
use super::rules::promote;
use super::type_params::ResolvedType;
use super::value::{Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{BinaryOp, CmpPred, Elem, Op, Type, UnaryOp};
use crate::syntax::ast::{BinOp, Expr, ExprKind, IndexItem, Span, UnOp};
use crate::types::DType;

impl Checker<'_> {
    pub fn check_expr(&mut self, e: &Expr) -> R<Val> {
        // Nesting is bounded by the parser; the stack may still need to grow in debug builds.
        stacker::maybe_grow(256 * 1024, 4 * 1024 * 1024, || self.check_expr_inner(e))
    }

    fn check_expr_inner(&mut self, e: &Expr) -> R<Val> {
        match &e.kind {
            ExprKind::Int(i) => Ok(Val::Const(Const::weak_int(*i))),
            ExprKind::Float(f) => Ok(Val::Const(Const::weak_float(*f))),
            ExprKind::Bool(b) => Ok(Val::Const(Const::boolean(*b))),
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::Unary { op, operand } => {
                let v = self.check_expr(operand)?;
                self.unary(*op, v, e.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.check_expr(lhs)?;
                let b = self.check_expr(rhs)?;
                self.binary(*op, (a, lhs.span), (b, rhs.span), e.span)
            }
            ExprKind::Cast { value, ty } => {
                let v = self.check_expr(value)?;
                let ResolvedType::Scalar(d) = self.resolve_type(ty)? else {
                    return Err(Diagnostic::new(ty.span, "cannot cast to a pointer type"));
                };
                self.cast(v, d, value.span)
            }
            ExprKind::Call { callee, args } => self.call(callee, args, e.span),
            ExprKind::Index { base, items } => {
                let v = self.check_expr(base)?;
                self.index(v, items, base.span, e.span)
            }
            ExprKind::List(items) => {
                let vals = items
                    .iter()
                    .map(|i| Ok((self.check_expr(i)?, i.span)))
                    .collect::<R<Vec<_>>>()?;
                Ok(Val::List(vals))
            }
        }
    }

    fn name(&mut self, n: &str, span: Span) -> R<Val> {
        if let Some(b) = self.lookup(n) {
            let val = b.val.clone();
            if matches!(val, Val::DType(_)) {
                self.type_param_uses.push((span, n.to_string()));
            }
            return Ok(val);
        }
        if n == "inf" {
            return Ok(Val::Const(Const::weak_float(f64::INFINITY)));
        }
        if let Some(d) = DType::from_name(n) {
            return Ok(Val::DType(d));
        }
        let mut d = Diagnostic::new(span, format!("unknown name `{n}`"))
            .with_label("not found in this scope");
        if let Some(close) = self.closest_name(n) {
            d = d.with_note(format!("a name in scope is `{close}`"));
        }
        Err(d)
    }

    fn closest_name(&self, n: &str) -> Option<String> {
        let names = self.scopes.iter().flat_map(|s| s.keys());
        names
            .map(|k| (edit_distance(k, n), k))
            .filter(|(d, k)| *d <= 2 && *d < k.len())
            .min()
            .map(|(_, k)| k.clone())
    }

    pub fn unary(&mut self, op: UnOp, v: Val, span: Span) -> R<Val> {
        if let Val::Const(c) = v {
            return fold_unary(op, c)
                .map(Val::Const)
                .map_err(|m| Diagnostic::new(span, m));
        }
        let Val::Tile { value, .. } = v else {
            return Err(Diagnostic::new(
                span,
                format!("expected a number, found {}", self.describe(&v)),
            ));
        };
        let ty = self.ty(value);
        let ok = match (op, ty.elem) {
            (UnOp::Neg, Elem::Scalar(d)) => d != DType::Bool,
            (UnOp::Not, Elem::Scalar(d)) => d == DType::Bool || d.is_int(),
            _ => false,
        };
        if !ok {
            let sym = if op == UnOp::Neg { "-" } else { "!" };
            return Err(Diagnostic::new(
                span,
                format!("`{sym}` does not apply to {}", self.describe(&v)),
            ));
        }
        let uop = if op == UnOp::Neg {
            UnaryOp::Neg
        } else {
            UnaryOp::Not
        };
        Ok(Val::tile(self.b.push(Op::Unary(uop, value), ty)))
    }

    /// The element type of a binary operation's operands, from the typing rules.
    pub fn join_dtypes(&self, a: &Val, b: &Val, span: Span) -> R<DType> {
        let (da, db) = match (self.dtype_of(a), self.dtype_of(b)) {
            (Some(x), Some(y)) => (x, y),
            _ => {
                let bad = if self.dtype_of(a).is_none() { a } else { b };
                return Err(Diagnostic::new(
                    span,
                    format!("expected a number, found {}", self.describe(bad)),
                ));
            }
        };
        let r = match (a, b) {
            (Val::Const(c), _) if c.weak => weak_joins(c, db),
            (_, Val::Const(c)) if c.weak => weak_joins(c, da),
            _ => promote(da, db),
        };
        r.map_err(|m| {
            Diagnostic::new(span, format!("type mismatch: {m}")).with_note(format!(
                "left is {}, right is {}",
                self.describe(a),
                self.describe(b)
            ))
        })
    }

    pub fn binary(
        &mut self,
        op: BinOp,
        (a, sa): (Val, Span),
        (b, sb): (Val, Span),
        span: Span,
    ) -> R<Val> {
        if let (Val::Const(x), Val::Const(y)) = (&a, &b) {
            return fold_binary(op, *x, *y)
                .map(Val::Const)
                .map_err(|m| Diagnostic::new(span, m));
        }
        // Pointer arithmetic: `p + offsets` / `offsets + p`.
        if let Some(r) = self.ptr_add(op, (&a, sa), (&b, sb), span)? {
            return Ok(r);
        }
        let dtype = self.join_dtypes(&a, &b, span)?;
        let shape = self.common_shape(&[(&a, sa), (&b, sb)])?;
        let check = |ok: bool, what: &str| -> R<()> {
            if ok {
                Ok(())
            } else {
                Err(Diagnostic::new(
                    span,
                    format!("`{}` needs {what} operands, found `{dtype}`", op.symbol()),
                ))
            }
        };
        let result_ty = Type::tile(dtype, &shape);
        let x = self.operand(&a, dtype, &shape, sa, "the left operand")?;
        let y = self.operand(&b, dtype, &shape, sb, "the right operand")?;
        let (iop, ty) = match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                check(dtype != DType::Bool, "numeric")?;
                let o = match op {
                    BinOp::Add => BinaryOp::Add,
                    BinOp::Sub => BinaryOp::Sub,
                    BinOp::Mul => BinaryOp::Mul,
                    BinOp::Div => BinaryOp::Div,
                    _ => BinaryOp::Rem,
                };
                (Op::Binary(o, x, y), result_ty)
            }
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if !matches!(op, BinOp::Eq | BinOp::Ne) {
                    check(dtype != DType::Bool, "numeric")?;
                }
                let p = match op {
                    BinOp::Eq => CmpPred::Eq,
                    BinOp::Ne => CmpPred::Ne,
                    BinOp::Lt => CmpPred::Lt,
                    BinOp::Le => CmpPred::Le,
                    BinOp::Gt => CmpPred::Gt,
                    _ => CmpPred::Ge,
                };
                (Op::Cmp(p, x, y), Type::tile(DType::Bool, &shape))
            }
            BinOp::LogicalAnd | BinOp::LogicalOr => {
                check(dtype == DType::Bool, "`bool`")?;
                let o = if op == BinOp::LogicalAnd {
                    BinaryOp::And
                } else {
                    BinaryOp::Or
                };
                (Op::Binary(o, x, y), result_ty)
            }
            BinOp::BitAnd | BinOp::BitOr | BinOp::BitXor => {
                check(dtype == DType::Bool || dtype.is_int(), "integer or `bool`")?;
                let o = match op {
                    BinOp::BitAnd => BinaryOp::And,
                    BinOp::BitOr => BinaryOp::Or,
                    _ => BinaryOp::Xor,
                };
                (Op::Binary(o, x, y), result_ty)
            }
            BinOp::Shl | BinOp::Shr => {
                check(dtype.is_int(), "integer")?;
                let o = if op == BinOp::Shl {
                    BinaryOp::Shl
                } else {
                    BinaryOp::Shr
                };
                (Op::Binary(o, x, y), result_ty)
            }
        };
        Ok(Val::tile(self.b.push(iop, ty)))
    }

    /// `p + offsets`: a pointer tile. Returns `None` when neither side is a pointer.
    fn ptr_add(
        &mut self,
        op: BinOp,
        (a, sa): (&Val, Span),
        (b, sb): (&Val, Span),
        span: Span,
    ) -> R<Option<Val>> {
        let is_ptr = |c: &Self, v: &Val| match v {
            Val::Tile { value, .. } => matches!(c.b.ty(*value).elem, Elem::Ptr(_)),
            _ => false,
        };
        let (pa, pb) = (is_ptr(self, a), is_ptr(self, b));
        if !pa && !pb {
            return Ok(None);
        }
        if op != BinOp::Add || (pa && pb) {
            return Err(Diagnostic::new(
                span,
                "pointers only support `pointer + integer offsets`",
            ));
        }
        let ((p, sp), (off, so)) = if pa {
            ((a, sa), (b, sb))
        } else {
            ((b, sb), (a, sa))
        };
        let Val::Tile {
            value: pv,
            mutable_ptr,
        } = p
        else {
            unreachable!()
        };
        let od = self.dtype_of(off).filter(|d| d.is_int()).ok_or_else(|| {
            Diagnostic::new(
                so,
                format!(
                    "a pointer offset must be an integer, found {}",
                    self.describe(off)
                ),
            )
        })?;
        let shape = self.common_shape(&[(p, sp), (off, so)])?;
        let pty = self.ty(*pv);
        let ptr = self.broadcast_value(*pv, &shape, sp, "the pointer")?;
        let od = if matches!(off, Val::Const(c) if c.weak) {
            DType::I32
        } else {
            od
        };
        let offv = self.operand(off, od, &shape, so, "the offset")?;
        let r = self.b.push(Op::PtrAdd(ptr, offv), pty.with_shape(&shape));
        Ok(Some(Val::Tile {
            value: r,
            mutable_ptr: *mutable_ptr,
        }))
    }

    pub fn cast(&mut self, v: Val, to: DType, span: Span) -> R<Val> {
        match v {
            Val::Const(c) => Ok(Val::Const(c.cast(to))),
            Val::Tile { value, .. } => {
                let ty = self.ty(value);
                match ty.elem {
                    Elem::Scalar(d) if d == to => Ok(Val::tile(value)),
                    Elem::Scalar(_) => {
                        Ok(Val::tile(self.b.push(Op::Cast(value), ty.with_dtype(to))))
                    }
                    Elem::Ptr(_) => Err(Diagnostic::new(span, "pointers cannot be cast")),
                }
            }
            other => Err(Diagnostic::new(
                span,
                format!("expected a number to cast, found {}", self.describe(&other)),
            )),
        }
    }

    /// `x[:, None]`: every existing axis is kept by a `:`; each `None` inserts an axis of size 1.
    fn index(&mut self, v: Val, items: &[IndexItem], base_span: Span, span: Span) -> R<Val> {
        let (value, mutable_ptr) = match v {
            Val::Tile { value, mutable_ptr } => (value, mutable_ptr),
            Val::Const(c) => (self.materialize(c, c.dtype, &[]), false),
            other => {
                return Err(Diagnostic::new(
                    base_span,
                    format!("only tiles can be indexed, found {}", self.describe(&other)),
                ))
            }
        };
        let ty = self.ty(value);
        let kept = items.iter().filter(|i| **i == IndexItem::Full).count();
        if kept != ty.shape.len() {
            return Err(Diagnostic::new(
                span,
                format!(
                    "indexing needs one `:` per axis: the tile has shape {} ({} axes) but {kept} `:` are given",
                    shape_text(&ty.shape),
                    ty.shape.len()
                ),
            ));
        }
        let mut dims = ty.shape.iter();
        let shape: Vec<u32> = items
            .iter()
            .map(|i| match i {
                IndexItem::Full => *dims.next().unwrap(),
                IndexItem::NewAxis => 1,
            })
            .collect();
        let r = self.b.push(Op::Reshape(value), ty.with_shape(&shape));
        Ok(Val::Tile {
            value: r,
            mutable_ptr,
        })
    }
}

/// Levenshtein distance, for "did you mean" notes.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
