//! The `--emit ast` dump. (To be written.)

use super::ast::Module;

/// Prints the syntax tree as an indented outline.
pub fn print_module(m: &Module) -> String {
    format!("{m:?}")
}
