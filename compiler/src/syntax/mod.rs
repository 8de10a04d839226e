//! The front end: source text to [`ast::Module`], with nom.

pub mod ast;
mod lex;
mod parser;
mod print;

pub use parser::parse_module;
pub use print::print_module;
