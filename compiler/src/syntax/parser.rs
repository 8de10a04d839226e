//! nom parsers for the Kiln language. (To be written.)

use super::ast::Module;
use crate::diag::Diagnostic;

/// Parses a whole source file.
pub fn parse_module(_text: &str) -> Result<Module, Diagnostic> {
    Ok(Module { items: vec![] })
}
