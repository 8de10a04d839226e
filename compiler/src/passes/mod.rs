//! Passes over the tile IR, run in a fixed order by [`run_all`].

use crate::ir::Kernel;

/// Runs every pass, in order.
pub fn run_all(_k: &mut Kernel) {}
