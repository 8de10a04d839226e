//! The model commands of the `kiln` CLI, one file each.

pub mod import;
