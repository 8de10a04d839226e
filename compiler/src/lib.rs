//! # kiln-compiler
//!
//! The Kiln tile language, from source text to machine code. A kernel goes through a short,
//! named list of stages, each of which can be dumped (`kiln compile --emit ...`):
//!
//! 1. [`syntax`]: nom parsers turn text into an [`ast::Module`] with byte spans;
//! 2. [`sema`]: names, types, shapes and broadcasting are checked, compile-time constants are
//!    substituted, helpers are inlined, and the result is lowered to the tile [`ir`];
//! 3. [`passes`]: simplification and index widening on the IR;
//! 4. `backend`: the IR becomes PTX (LLVM NVPTX) or native code (Cranelift).
//!
//! Errors are [`CompileError`]s that render as `file:line:col: error: ...` with the source line
//! and a caret.

pub mod backend;
pub mod diag;
pub mod ir;
pub mod passes;
pub mod sema;
pub mod syntax;
pub mod types;

pub use diag::{CompileError, Diagnostic, Source};
pub use ir::ConstValue;
pub use syntax::ast;
pub use types::DType;

use std::collections::BTreeMap;

/// Values for compile-time parameters, by name (`-D BLOCK=1024`).
pub type Defines = BTreeMap<String, ConstValue>;

/// Parses a source file into its syntax tree.
pub fn parse(src: &Source) -> Result<ast::Module, CompileError> {
    syntax::parse_module(&src.text).map_err(|d| CompileError::new(src, vec![d]))
}

/// Parses and checks a source file, specialising every kernel in it with `defines` (falling back
/// to each constant's default), and returns the kernels in tile IR, before any pass has run.
pub fn check(src: &Source, defines: &Defines) -> Result<Vec<ir::Kernel>, CompileError> {
    let module = parse(src)?;
    sema::check_module(&module, defines).map_err(|ds| CompileError::new(src, ds))
}

/// Parses, checks and optimises: the IR that backends receive.
pub fn compile_to_ir(src: &Source, defines: &Defines) -> Result<Vec<ir::Kernel>, CompileError> {
    let mut kernels = check(src, defines)?;
    for k in &mut kernels {
        passes::run_all(k);
    }
    Ok(kernels)
}

/// Parses a `-D` value: `true`/`false`, an integer, a float, or an element type name (`f32`,
/// `bf16`, `f16`, `i32`, `i64`, `bool`) for a type parameter.
pub fn parse_define_value(text: &str) -> Option<ConstValue> {
    match text {
        "true" => return Some(ConstValue::Bool(true)),
        "false" => return Some(ConstValue::Bool(false)),
        _ => {}
    }
    if let Some(d) = DType::from_name(text) {
        return Some(ConstValue::DType(d));
    }
    if let Ok(i) = text.replace('_', "").parse::<i64>() {
        return Some(ConstValue::Int(i));
    }
    text.parse::<f64>().ok().map(ConstValue::Float)
}
