//! The checker's state: the IR builder, lexical scopes, and the conversions every rule uses
//! (materialising constants, broadcasting, casting operands to a common type).

use super::rules::{broadcast_shapes, broadcasts_to, too_many_elems};
use super::value::{describe, Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{Builder, ConstValue, Elem, Op, Type, Value};
use crate::syntax::ast::{Function, Span};
use crate::types::DType;
use std::collections::HashMap;

pub type R<T> = Result<T, Diagnostic>;

/// A name in scope.
#[derive(Clone, Debug)]
pub struct Binding {
    pub val: Val,
    pub mutable: bool,
}

pub struct Checker<'m> {
    pub fns: HashMap<&'m str, &'m Function>,
    pub b: Builder,
    /// Lexical scopes of the current frame, innermost last.
    pub scopes: Vec<HashMap<String, Binding>>,
    /// Helpers being inlined, outermost first (to reject recursion).
    pub call_stack: Vec<String>,
    /// Where a type parameter's name was read as an expression, to explain errors there.
    pub type_param_uses: Vec<(Span, String)>,
}

impl<'m> Checker<'m> {
    pub fn new(fns: HashMap<&'m str, &'m Function>, b: Builder) -> Checker<'m> {
        Checker {
            fns,
            b,
            scopes: vec![HashMap::new()],
            call_stack: vec![],
            type_param_uses: vec![],
        }
    }

    // ---- scopes -------------------------------------------------------------------------

    pub fn push_scope(&mut self) {
        self.scopes.push(HashMap::new());
    }

    pub fn pop_scope(&mut self) {
        self.scopes.pop();
    }

    pub fn bind(&mut self, name: &str, val: Val, mutable: bool) {
        self.scopes
            .last_mut()
            .expect("a scope is always open")
            .insert(name.to_string(), Binding { val, mutable });
    }

    pub fn lookup(&self, name: &str) -> Option<&Binding> {
        self.scopes.iter().rev().find_map(|s| s.get(name))
    }

    /// Rebinds an existing mutable variable in the scope that declared it.
    pub fn set_var(&mut self, name: &str, val: Val) {
        if let Some(b) = self.scopes.iter_mut().rev().find_map(|s| s.get_mut(name)) {
            b.val = val;
        }
    }

    // ---- types of values ----------------------------------------------------------------

    pub fn ty(&self, v: Value) -> Type {
        self.b.ty(v).clone()
    }

    /// Shape of a value (a constant is a scalar).
    pub fn shape_of(&self, v: &Val) -> Vec<u32> {
        match v {
            Val::Tile { value, .. } => self.b.ty(*value).shape.clone(),
            _ => vec![],
        }
    }

    /// Element dtype of a number (not a pointer).
    pub fn dtype_of(&self, v: &Val) -> Option<DType> {
        match v {
            Val::Const(c) => Some(c.dtype),
            Val::Tile { value, .. } => self.b.ty(*value).dtype(),
            _ => None,
        }
    }

    /// How a value reads in an error message.
    pub fn describe(&self, v: &Val) -> String {
        match v {
            Val::Const(c) if c.weak => format!("a `{}` literal", c.dtype),
            Val::Const(c) => format!("a `{}` constant", c.dtype),
            Val::Tile { value, .. } => format!("`{}`", describe(self.b.ty(*value))),
            Val::DType(d) => format!("the type `{d}`"),
            Val::List(_) => "a list".into(),
            Val::Unit => "nothing (`()`)".into(),
        }
    }

    // ---- conversions --------------------------------------------------------------------

    /// Emits a constant of this dtype splatted to `shape`.
    pub fn materialize(&mut self, c: Const, dtype: DType, shape: &[u32]) -> Value {
        let c = c.cast(dtype);
        self.b.constant(c.value, Type::tile(dtype, shape))
    }

    /// An IR value for an operand of element type `dtype` (which it must already have, or be a
    /// constant that converts to it), at its own shape.
    pub fn scalar_operand(&mut self, v: &Val, dtype: DType, span: Span) -> R<Value> {
        match v {
            Val::Const(c) => Ok(self.materialize(*c, dtype, &[])),
            Val::Tile { value, .. } => {
                let ty = self.ty(*value);
                match ty.elem {
                    Elem::Scalar(d) if d == dtype => Ok(*value),
                    // Only widening reaches here: callers apply the promotion rules first.
                    Elem::Scalar(_) => Ok(self.b.push(Op::Cast(*value), ty.with_dtype(dtype))),
                    Elem::Ptr(_) => Err(Diagnostic::new(
                        span,
                        format!("expected a number, found {}", self.describe(v)),
                    )),
                }
            }
            other => Err(Diagnostic::new(
                span,
                format!("expected a number, found {}", self.describe(other)),
            )),
        }
    }

    /// Broadcasts a value (of any element type) to `shape`, which it must broadcast to.
    pub fn broadcast_value(&mut self, v: Value, shape: &[u32], span: Span, what: &str) -> R<Value> {
        let ty = self.ty(v);
        if ty.shape == shape {
            return Ok(v);
        }
        if !broadcasts_to(&ty.shape, shape) {
            return Err(Diagnostic::new(
                span,
                format!(
                    "{what} of shape {} cannot be broadcast to {}",
                    shape_text(&ty.shape),
                    shape_text(shape)
                ),
            ));
        }
        if ty.shape.is_empty() {
            return Ok(self.b.push(Op::Splat(v), ty.with_shape(shape)));
        }
        let mut v = v;
        if ty.shape.len() < shape.len() {
            let mut padded = vec![1; shape.len() - ty.shape.len()];
            padded.extend(&ty.shape);
            v = self.b.push(Op::Reshape(v), ty.with_shape(&padded));
        }
        Ok(self.b.push(Op::Broadcast(v), ty.with_shape(shape)))
    }

    /// An operand converted to `dtype` and broadcast to `shape`.
    pub fn operand(
        &mut self,
        v: &Val,
        dtype: DType,
        shape: &[u32],
        span: Span,
        what: &str,
    ) -> R<Value> {
        if let Val::Const(c) = v {
            return Ok(self.materialize(*c, dtype, shape));
        }
        let value = self.scalar_operand(v, dtype, span)?;
        self.broadcast_value(value, shape, span, what)
    }

    /// The broadcast shape of several values, or an error naming the two that clash.
    pub fn common_shape(&self, vals: &[(&Val, Span)]) -> R<Vec<u32>> {
        self.common_shape_or(vals, "shape mismatch")
    }

    /// As [`Checker::common_shape`], with `problem` opening the error message.
    pub fn common_shape_or(&self, vals: &[(&Val, Span)], problem: &str) -> R<Vec<u32>> {
        let mut shape: Vec<u32> = vec![];
        for (v, span) in vals {
            let s = self.shape_of(v);
            shape = broadcast_shapes(&shape, &s).ok_or_else(|| {
                Diagnostic::new(
                    *span,
                    format!(
                        "{problem}: {} cannot be broadcast with {}",
                        shape_text(&s),
                        shape_text(&shape)
                    ),
                )
                .with_note("shapes broadcast when, aligned at the right, each pair of dimensions is equal or one of them is 1")
            })?;
            // Broadcasting multiplies sizes: every shape it makes is held to the tile limit.
            if let Some(message) = too_many_elems(&shape) {
                return Err(Diagnostic::new(*span, message)
                    .with_label(format!("broadcast to {}", shape_text(&shape))));
            }
        }
        Ok(shape)
    }

    /// Requires a compile-time integer.
    pub fn const_int(&self, v: &Val, span: Span, what: &str) -> R<i64> {
        match v {
            Val::Const(Const {
                value: ConstValue::Int(i),
                ..
            }) => Ok(*i),
            Val::Tile { .. } => Err(Diagnostic::new(
                span,
                format!("{what} must be a compile-time constant, found a run-time value"),
            )
            .with_label("not known at compile time")),
            other => Err(Diagnostic::new(
                span,
                format!(
                    "{what} must be an integer constant, found {}",
                    self.describe(other)
                ),
            )),
        }
    }
}

/// `[1024]`, `[64, 128]`, `[]` (scalar).
pub fn shape_text(shape: &[u32]) -> String {
    if shape.is_empty() {
        return "[] (a scalar)".into();
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}
