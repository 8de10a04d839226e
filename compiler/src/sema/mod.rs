//! The checker: resolves names, infers element types and shapes, applies broadcasting, folds
//! compile-time constants, inlines helpers, and lowers each kernel to tile IR as it goes.
//!
//! Checking and lowering are one walk: a well-typed expression *is* its IR. Compile-time values
//! (literals, constants, and what folds from them) stay out of the IR until an operand needs them,
//! so `BLOCK / 32` can size a tile and `if HAS_BIAS { .. }` compiles only the branch taken.

mod builtin_ops;
pub mod builtin_table;
mod builtins;
mod checker;
mod expr;
pub mod fold;
mod kernel;
pub mod rules;
mod stmt;
mod type_params;
pub mod value;

use crate::diag::Diagnostic;
use crate::ir::Kernel;
use crate::syntax::ast::{Item, Module, Span};
use crate::Defines;

/// Checks every kernel of a module and lowers it, specialised with `defines`. Helpers are checked
/// where they are called. Returns one diagnostic per failing kernel.
pub fn check_module(module: &Module, defines: &Defines) -> Result<Vec<Kernel>, Vec<Diagnostic>> {
    let mut kernels = vec![];
    let mut errors = vec![];
    if let Some(d) = unknown_define(module, defines) {
        errors.push(d);
    }
    if let Some(d) = duplicate_item(module) {
        errors.push(d);
    }
    for item in &module.items {
        if let Item::Kernel(k) = item {
            match kernel::check_kernel(module, k, defines) {
                Ok(ir) => kernels.push(ir),
                Err(d) => errors.push(d),
            }
        }
    }
    if errors.is_empty() {
        Ok(kernels)
    } else {
        Err(errors)
    }
}

/// A `-D NAME=...` that no kernel in the file declares is almost certainly a typo.
fn unknown_define(module: &Module, defines: &Defines) -> Option<Diagnostic> {
    let declared = |name: &str| {
        module.items.iter().any(|item| match item {
            Item::Kernel(k) => k.consts.iter().any(|c| c.name.name == name),
            Item::Function(_) => false,
        })
    };
    let unknown: Vec<&str> = defines
        .keys()
        .map(String::as_str)
        .filter(|n| !declared(n))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    Some(Diagnostic::new(
        Span::new(0, 0),
        format!(
            "`-D {}` given, but no kernel in this file declares a constant of that name",
            unknown.join("`, `-D ")
        ),
    ))
}

fn duplicate_item(module: &Module) -> Option<Diagnostic> {
    let mut seen = std::collections::HashMap::new();
    for item in &module.items {
        let name = match item {
            Item::Kernel(k) => &k.name,
            Item::Function(f) => &f.name,
        };
        if seen.insert(name.name.as_str(), name.span).is_some() {
            return Some(
                Diagnostic::new(name.span, format!("`{}` is defined twice", name.name))
                    .with_label("second definition"),
            );
        }
    }
    None
}
