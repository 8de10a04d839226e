//! One kernel: its compile-time constants, its parameters, its body.

use super::checker::{Checker, R};
use super::type_params::{type_param, ResolvedType};
use super::value::{Const, Val};
use crate::diag::Diagnostic;
use crate::ir::{verify, Builder, ConstValue, Kernel, ParamKind};
use crate::syntax::ast::{self, Item, Module, TypeExprKind};
use crate::types::DType;
use crate::Defines;
use std::collections::HashMap;

/// Checks one kernel, specialised with `defines`, and returns its IR.
pub fn check_kernel(module: &Module, k: &ast::Kernel, defines: &Defines) -> R<Kernel> {
    let fns = module
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Function(f) => Some((f.name.name.as_str(), f)),
            Item::Kernel(_) => None,
        })
        .collect();
    let mut c = Checker::new(fns, Builder::new(&k.name.name));
    let mut seen: HashMap<String, ast::Span> = HashMap::new();
    let mut taken = |name: &'_ ast::Ident| -> R<()> {
        if seen.insert(name.name.clone(), name.span).is_some() {
            return Err(Diagnostic::new(
                name.span,
                format!("`{}` is declared twice in `{}`", name.name, k.name.name),
            ));
        }
        Ok(())
    };
    for cp in &k.consts {
        taken(&cp.name)?;
        if cp.ty.kind == TypeExprKind::Type {
            let d = type_param(&mut c, cp, defines, &k.name.name)?;
            c.b.add_const(&cp.name.name, ConstValue::DType(d));
            c.bind(&cp.name.name, Val::DType(d), false);
            continue;
        }
        let value = const_param(&mut c, cp, defines, &k.name.name)?;
        c.b.add_const(&cp.name.name, value.value);
        c.bind(&cp.name.name, Val::Const(value), false);
    }
    for p in &k.params {
        taken(&p.name)?;
        let kind = match c.resolve_type(&p.ty)? {
            ResolvedType::Ptr {
                pointee: DType::Bool,
                ..
            } => {
                return Err(Diagnostic::new(
                    p.ty.span,
                    "pointers to `bool` are not supported; use `*i32` or a byte mask",
                ))
            }
            ResolvedType::Ptr { pointee, mutable } => ParamKind::Ptr { pointee, mutable },
            ResolvedType::Scalar(d @ (DType::I32 | DType::I64 | DType::F32)) => {
                ParamKind::Scalar(d)
            }
            ResolvedType::Scalar(d) => {
                return Err(Diagnostic::new(
                    p.ty.span,
                    format!("scalar parameters must be `i32`, `i64` or `f32`, found `{d}`"),
                )
                .with_note("pass flags as compile-time constants: `<FLAG: bool = false>`"))
            }
        };
        let v = c.b.add_param(&p.name.name, kind);
        let mutable_ptr = matches!(kind, ParamKind::Ptr { mutable: true, .. });
        c.bind(
            &p.name.name,
            Val::Tile {
                value: v,
                mutable_ptr,
            },
            false,
        );
    }
    c.check_block_unit(&k.body)
        .map_err(|d| c.explain_type_param_misuse(d))?;
    let kernel = c.b.finish();
    if let Err(e) = verify(&kernel) {
        return Err(Diagnostic::new(
            k.name.span,
            format!("internal compiler error: {e}"),
        ));
    }
    Ok(kernel)
}

/// The value of a compile-time parameter: from `-D`, else its default.
fn const_param(c: &mut Checker, cp: &ast::ConstParam, defines: &Defines, kernel: &str) -> R<Const> {
    let TypeExprKind::Scalar(d) = cp.ty.kind else {
        return Err(Diagnostic::new(
            cp.ty.span,
            "compile-time constants cannot be pointers",
        ));
    };
    if d == DType::F16 || d == DType::Bf16 {
        return Err(Diagnostic::new(
            cp.ty.span,
            "compile-time constants must be `i32`, `i64`, `f32` or `bool`",
        ));
    }
    let name = &cp.name.name;
    let given = match (defines.get(name), &cp.default) {
        (Some(v), _) => *v,
        (None, Some(e)) => match c.check_expr(e)? {
            Val::Const(k) => k.value,
            _ => {
                return Err(Diagnostic::new(
                    e.span,
                    format!("the default of `{name}` must be a compile-time constant"),
                ))
            }
        },
        (None, None) => {
            return Err(Diagnostic::new(
                cp.name.span,
                format!(
                "`{kernel}` needs a value for `{name}`: pass `-D {name}=...` or give it a default"
            ),
            ))
        }
    };
    if let ConstValue::DType(t) = given {
        return Err(Diagnostic::new(
            cp.name.span,
            format!("`{name}` is `{d}`, but the value given is the type `{t}`"),
        )
        .with_note("only a type parameter, declared `NAME: type`, takes an element type"));
    }
    let fits = match (given, d) {
        (ConstValue::Int(v), DType::I32) => i32::try_from(v).is_ok(),
        (ConstValue::Int(_), DType::I64 | DType::F32) => true,
        (ConstValue::Float(_), DType::F32) => true,
        (ConstValue::Bool(_), DType::Bool) => true,
        _ => false,
    };
    if !fits {
        return Err(Diagnostic::new(
            cp.name.span,
            format!("`{name}` is `{d}`, but the value given is `{given}`"),
        ));
    }
    let k = Const {
        value: given,
        dtype: d,
        weak: false,
    };
    Ok(k.cast(d))
}
