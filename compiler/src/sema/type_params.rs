//! Type parameters: `kernel k<T: type = bf16>(x: *T, ..)`. A type parameter is bound to its element
//! type like a constant is bound to its value, and substituted wherever the source writes `T`.

use super::checker::{Checker, R};
use super::value::Val;
use crate::diag::Diagnostic;
use crate::ir::ConstValue;
use crate::syntax::ast::{self, ExprKind, TypeExpr, TypeExprKind};
use crate::types::DType;
use crate::Defines;

/// A written type with the kernel's type parameters substituted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResolvedType {
    Scalar(DType),
    Ptr { pointee: DType, mutable: bool },
}

impl Checker<'_> {
    /// The type `t` stands for in this specialisation.
    pub fn resolve_type(&self, t: &TypeExpr) -> R<ResolvedType> {
        match &t.kind {
            TypeExprKind::Param { name, ptr } => {
                let val = self.lookup(name).map(|b| &b.val);
                let Some(Val::DType(d)) = val else {
                    // The parser reads `T` as a type where a kernel's type parameter or a
                    // helper's untyped parameter has that name; here it holds something else.
                    let holds = val.map_or("nothing".into(), |v| self.describe(v));
                    return Err(Diagnostic::new(
                        t.span,
                        format!("`{name}` is not a type here: it holds {holds}"),
                    )
                    .with_note("a type parameter, or a helper's parameter given a type (`f(x, T)`), can stand as a type"));
                };
                Ok(match ptr {
                    Some(mutable) => ResolvedType::Ptr {
                        pointee: *d,
                        mutable: *mutable,
                    },
                    None => ResolvedType::Scalar(*d),
                })
            }
            TypeExprKind::Type => Err(Diagnostic::new(
                t.span,
                "`type` is the kind of a type parameter (`<T: type = bf16>`), not a type",
            )),
            TypeExprKind::Scalar(d) => Ok(ResolvedType::Scalar(*d)),
            TypeExprKind::Ptr { pointee, mutable } => Ok(ResolvedType::Ptr {
                pointee: *pointee,
                mutable: *mutable,
            }),
        }
    }

    /// Explains an error at a place where a type parameter was read as a value (`T + 1`).
    pub fn explain_type_param_misuse(&self, d: Diagnostic) -> Diagnostic {
        let misuse = self.type_param_uses.iter().find(|(span, _)| {
            d.span.start <= span.start && span.end <= d.span.end && d.message.contains("the type `")
        });
        match misuse {
            Some((_, name)) => d.with_note(format!(
                "`{name}` is a type parameter: it can stand where a type does (`as {name}`, \
                 `zeros([N], {name})`, `*{name}`), not as a value"
            )),
            None => d,
        }
    }
}

/// The element type of a type parameter: from `-D`, else its default.
pub fn type_param(
    c: &mut Checker,
    cp: &ast::ConstParam,
    defines: &Defines,
    kernel: &str,
) -> R<DType> {
    let name = &cp.name.name;
    if let Some(v) = defines.get(name) {
        return match v {
            ConstValue::DType(d) => Ok(*d),
            other => Err(Diagnostic::new(
                cp.name.span,
                format!("`{name}` is a type parameter, but the value given is `{other}`"),
            )
            .with_note(format!(
                "pass an element type: `-D {name}=f32` (one of {})",
                type_names()
            ))),
        };
    }
    let Some(default) = &cp.default else {
        return Err(Diagnostic::new(
            cp.name.span,
            format!(
                "`{kernel}` needs an element type for `{name}`: pass `-D {name}=f32` or give it a default (`{name}: type = bf16`)"
            ),
        ));
    };
    if let ExprKind::Name(n) = &default.kind {
        if let Some(d) = DType::from_name(n) {
            return Ok(d);
        }
        // An earlier type parameter: `U: type = T`.
        if let Some(Val::DType(d)) = c.lookup(n).map(|b| &b.val) {
            return Ok(*d);
        }
        return Err(Diagnostic::new(
            default.span,
            format!("unknown type `{n}`; the element types are {}", type_names()),
        ));
    }
    Err(Diagnostic::new(
        default.span,
        format!(
            "the default of the type parameter `{name}` must be an element type such as `bf16`"
        ),
    ))
}

fn type_names() -> String {
    let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
    names.join(", ")
}
