//! Statements and structured control flow. Mutable variables assigned inside a `for` body or an
//! `if` branch become the values the loop carries or the `if` yields.

use super::checker::{Checker, R};
use super::value::{describe, Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{ConstValue, Op, Type, Value};
use crate::syntax::ast::{Block, Expr, Stmt, StmtKind};
use crate::types::DType;

impl Checker<'_> {
    /// Checks a block in a new scope and returns the value of its tail expression (`Unit` if none).
    pub fn check_block_value(&mut self, block: &Block) -> R<Val> {
        self.push_scope();
        let r = self.block_contents(block);
        self.pop_scope();
        r
    }

    fn block_contents(&mut self, block: &Block) -> R<Val> {
        for s in &block.stmts {
            self.check_stmt(s)?;
        }
        match &block.tail {
            Some(e) => self.check_expr(e),
            None => Ok(Val::Unit),
        }
    }

    /// A block whose value, if any, is discarded: a kernel body, a loop body, an `if` branch.
    pub fn check_block_unit(&mut self, block: &Block) -> R<()> {
        let v = self.check_block_value(block)?;
        match (v, &block.tail) {
            (Val::Unit, _) | (_, None) => Ok(()),
            (v, Some(e)) => Err(Diagnostic::new(
                e.span,
                format!(
                    "this block ends with a value ({}) that is never used",
                    self.describe(&v)
                ),
            )
            .with_label("add `;` to discard it")),
        }
    }

    fn check_stmt(&mut self, s: &Stmt) -> R<()> {
        match &s.kind {
            StmtKind::Let {
                name,
                mutable,
                ty,
                value,
            } => {
                let mut v = self.check_expr(value)?;
                if matches!(v, Val::Unit | Val::DType(_) | Val::List(_)) {
                    return Err(Diagnostic::new(
                        value.span,
                        format!("cannot bind `{}` to {}", name.name, self.describe(&v)),
                    ));
                }
                if let Some(t) = ty {
                    v = self.annotate(v, t, value.span)?;
                }
                if *mutable {
                    // Mutable variables live in the IR so loops can carry them.
                    if let Val::Const(c) = v {
                        v = Val::tile(self.materialize(c, c.dtype, &[]));
                    }
                }
                self.bind(&name.name, v, *mutable);
                Ok(())
            }
            StmtKind::Assign { target, op, value } => {
                let Some(binding) = self.lookup(&target.name).cloned() else {
                    return Err(Diagnostic::new(
                        target.span,
                        format!("unknown name `{}`", target.name),
                    ));
                };
                if !binding.mutable {
                    return Err(Diagnostic::new(
                        target.span,
                        format!("cannot assign to `{}`: it is not mutable", target.name),
                    )
                    .with_note(format!("declare it with `let mut {}`", target.name)));
                }
                let mut v = self.check_expr(value)?;
                if let Some(op) = op {
                    v = self.binary(
                        *op,
                        (binding.val.clone(), target.span),
                        (v, value.span),
                        s.span,
                    )?;
                }
                let v = self.coerce_to(&binding.val, v, &target.name, value.span)?;
                self.set_var(&target.name, v);
                Ok(())
            }
            StmtKind::Expr(e) => {
                self.check_expr(e)?;
                Ok(())
            }
            StmtKind::StaticAssert { cond, message } => {
                let v = self.check_expr(cond)?;
                match v {
                    Val::Const(Const {
                        value: ConstValue::Bool(true),
                        ..
                    }) => Ok(()),
                    Val::Const(Const {
                        value: ConstValue::Bool(false),
                        ..
                    }) => Err(Diagnostic::new(
                        cond.span,
                        format!(
                            "static assertion failed{}",
                            message
                                .as_ref()
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default()
                        ),
                    )),
                    other => Err(Diagnostic::new(
                        cond.span,
                        format!(
                            "`static_assert` needs a compile-time `bool`, found {}",
                            self.describe(&other)
                        ),
                    )),
                }
            }
            StmtKind::For {
                var,
                start,
                end,
                step,
                body,
            } => self.check_for(var, start, end, step.as_ref(), body),
            StmtKind::If {
                cond,
                then_block,
                else_block,
            } => self.check_if(cond, then_block, else_block.as_ref()),
        }
    }

    /// `let x: T = v`: a literal takes the type; anything else must already have it.
    fn annotate(
        &mut self,
        v: Val,
        t: &crate::syntax::ast::TypeExpr,
        span: crate::syntax::ast::Span,
    ) -> R<Val> {
        let super::type_params::ResolvedType::Scalar(d) = self.resolve_type(t)? else {
            return Err(Diagnostic::new(
                t.span,
                "a `let` may only annotate an element type",
            ));
        };
        match v {
            Val::Const(c) if c.weak || c.dtype == d => Ok(Val::Const(c.cast(d))),
            other if self.dtype_of(&other) == Some(d) => Ok(other),
            other => Err(Diagnostic::new(
                span,
                format!(
                    "type mismatch: expected `{d}`, found {}",
                    self.describe(&other)
                ),
            )
            .with_note(format!("convert it with `as {d}`"))),
        }
    }

    /// The new value of a mutable variable must keep its element type and shape; a literal or a
    /// broadcastable value of the same element type is converted.
    fn coerce_to(
        &mut self,
        old: &Val,
        new: Val,
        name: &str,
        span: crate::syntax::ast::Span,
    ) -> R<Val> {
        let Val::Tile {
            value: old_v,
            mutable_ptr,
        } = old
        else {
            return Ok(new);
        };
        let ty = self.ty(*old_v);
        if let Some(d) = ty.dtype() {
            let same_elem = match &new {
                Val::Const(c) => c.weak || c.dtype == d,
                other => self.dtype_of(other) == Some(d),
            };
            let fits = super::rules::broadcasts_to(&self.shape_of(&new), &ty.shape);
            if same_elem && fits {
                let v = self.operand(&new, d, &ty.shape, span, "the new value")?;
                return Ok(Val::Tile {
                    value: v,
                    mutable_ptr: *mutable_ptr,
                });
            }
        } else if let Val::Tile { value, mutable_ptr } = &new {
            if self.ty(*value) == ty {
                return Ok(Val::Tile {
                    value: *value,
                    mutable_ptr: *mutable_ptr,
                });
            }
        }
        Err(Diagnostic::new(
            span,
            format!(
                "type mismatch: `{name}` is `{}`, but the new value is {}",
                describe(&ty),
                self.describe(&new)
            ),
        )
        .with_note("a mutable variable keeps its element type and shape"))
    }

    /// Names assigned anywhere inside a block (including nested blocks).
    fn assigned_names(block: &Block, out: &mut Vec<String>) {
        for s in &block.stmts {
            match &s.kind {
                StmtKind::Assign { target, .. } if !out.contains(&target.name) => {
                    out.push(target.name.clone());
                }
                StmtKind::For { body, .. } => Self::assigned_names(body, out),
                StmtKind::If {
                    then_block,
                    else_block,
                    ..
                } => {
                    Self::assigned_names(then_block, out);
                    if let Some(e) = else_block {
                        Self::assigned_names(e, out);
                    }
                }
                _ => {}
            }
        }
    }

    /// Mutable variables visible here that `blocks` assign, with their current IR values.
    fn carried_vars(&self, blocks: &[&Block]) -> Vec<(String, Value, bool)> {
        let mut names = vec![];
        for b in blocks {
            Self::assigned_names(b, &mut names);
        }
        names
            .into_iter()
            .filter_map(|n| match self.lookup(&n) {
                Some(b) if b.mutable => match b.val {
                    Val::Tile { value, mutable_ptr } => Some((n, value, mutable_ptr)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn check_for(
        &mut self,
        var: &crate::syntax::ast::Ident,
        start: &Expr,
        end: &Expr,
        step: Option<&Expr>,
        body: &Block,
    ) -> R<()> {
        let lo = self.check_expr(start)?;
        let hi = self.check_expr(end)?;
        let st = match step {
            Some(e) => self.check_expr(e)?,
            None => Val::Const(Const::weak_int(1)),
        };
        let bounds = [
            (&lo, start.span),
            (&hi, end.span),
            (&st, step.map_or(end.span, |e| e.span)),
        ];
        let mut dtype: Option<DType> = None;
        for (v, span) in bounds {
            let d = match v {
                Val::Const(c) if c.weak && c.dtype.is_int() => continue,
                other => self.dtype_of(other),
            };
            match d {
                Some(d) if d.is_int() && self.shape_of(v).is_empty() => {
                    dtype = Some(dtype.map_or(d, |e| {
                        if e == DType::I64 || d == DType::I64 {
                            DType::I64
                        } else {
                            d
                        }
                    }));
                }
                _ => {
                    return Err(Diagnostic::new(
                        span,
                        format!(
                            "loop bounds must be integer scalars, found {}",
                            self.describe(v)
                        ),
                    ))
                }
            }
        }
        if let Val::Const(c) = &st {
            if c.as_i64().is_some_and(|s| s <= 0) {
                return Err(Diagnostic::new(
                    step.map_or(end.span, |e| e.span),
                    "the loop step must be positive",
                ));
            }
        }
        let dtype = dtype.unwrap_or(DType::I32);
        let lo = self.operand(&lo, dtype, &[], start.span, "the loop start")?;
        let hi = self.operand(&hi, dtype, &[], end.span, "the loop end")?;
        let step_v = self.operand(
            &st,
            dtype,
            &[],
            step.map_or(end.span, |e| e.span),
            "the loop step",
        )?;

        let carried = self.carried_vars(&[body]);
        let iv = self.b.new_value(Type::scalar(dtype));
        let mut args = vec![iv];
        for (name, v, mutable_ptr) in &carried {
            let a = self.b.new_value(self.ty(*v));
            args.push(a);
            self.set_var(
                name,
                Val::Tile {
                    value: a,
                    mutable_ptr: *mutable_ptr,
                },
            );
        }
        self.b.begin_block(args);
        self.push_scope();
        self.bind(&var.name, Val::tile(iv), false);
        let r = self.check_block_unit(body);
        let yielded: Vec<Value> = carried.iter().map(|(n, _, _)| self.current(n)).collect();
        self.pop_scope();
        self.b.push_effect(Op::Yield(yielded));
        let block = self.b.end_block();
        r?;
        let results = self.rebind_to_results(&carried);
        let init = carried.iter().map(|(_, v, _)| *v).collect();
        self.b.push_with_results(
            Op::For {
                lo,
                hi,
                step: step_v,
                init,
                body: block,
            },
            results,
        );
        Ok(())
    }

    /// Fresh result values for the carried variables of a `for` or `if`, which from now on
    /// stand for those variables.
    fn rebind_to_results(&mut self, carried: &[(String, Value, bool)]) -> Vec<Value> {
        let results: Vec<Value> = carried
            .iter()
            .map(|(_, v, _)| self.b.new_value(self.ty(*v)))
            .collect();
        for ((name, _, mutable_ptr), r) in carried.iter().zip(&results) {
            let mutable_ptr = *mutable_ptr;
            self.set_var(
                name,
                Val::Tile {
                    value: *r,
                    mutable_ptr,
                },
            );
        }
        results
    }

    fn current(&self, name: &str) -> Value {
        match self.lookup(name).map(|b| &b.val) {
            Some(Val::Tile { value, .. }) => *value,
            _ => unreachable!("carried variables are always IR values"),
        }
    }

    fn check_if(&mut self, cond: &Expr, then_block: &Block, else_block: Option<&Block>) -> R<()> {
        let c = self.check_expr(cond)?;
        if let Val::Const(Const {
            value: ConstValue::Bool(b),
            ..
        }) = c
        {
            // A compile-time condition compiles only the branch taken.
            return match (b, else_block) {
                (true, _) => self.check_block_unit(then_block),
                (false, Some(e)) => self.check_block_unit(e),
                (false, None) => Ok(()),
            };
        }
        if self.dtype_of(&c) != Some(DType::Bool) || !self.shape_of(&c).is_empty() {
            return Err(Diagnostic::new(
                cond.span,
                format!(
                    "the condition of `if` must be a `bool` scalar, found {}",
                    self.describe(&c)
                ),
            ));
        }
        let cond_v = self.scalar_operand(&c, DType::Bool, cond.span)?;
        let blocks: Vec<&Block> = std::iter::once(then_block).chain(else_block).collect();
        let carried = self.carried_vars(&blocks);
        let branch = |this: &mut Self, block: Option<&Block>| -> R<crate::ir::Block> {
            this.b.begin_block(vec![]);
            let r = block.map_or(Ok(()), |b| this.check_block_unit(b));
            let yielded: Vec<Value> = carried.iter().map(|(n, _, _)| this.current(n)).collect();
            this.b.push_effect(Op::Yield(yielded));
            for (name, v, mutable_ptr) in &carried {
                this.set_var(
                    name,
                    Val::Tile {
                        value: *v,
                        mutable_ptr: *mutable_ptr,
                    },
                );
            }
            let block = this.b.end_block();
            r.map(|_| block)
        };
        let then_ir = branch(self, Some(then_block))?;
        let else_ir = branch(self, else_block)?;
        let results = self.rebind_to_results(&carried);
        self.b.push_with_results(
            Op::If {
                cond: cond_v,
                then_block: then_ir,
                else_block: else_ir,
            },
            results,
        );
        Ok(())
    }
}
