//! The model commands of the `kiln` CLI, one file each.

pub mod compare;
pub mod data;
pub mod device;
pub mod eval;
pub mod export;
pub mod generate;
pub mod import;
pub mod train;
