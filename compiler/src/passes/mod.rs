//! Passes over the tile IR: a short, named list run in a fixed order by [`run_all`]. Each pass
//! keeps the kernel valid (`ir::verify`), and each can be run alone in tests.

mod cse;
mod dce;
mod widen_offsets;

pub use cse::cse;
pub use dce::dce;
pub use widen_offsets::widen_offsets;

use crate::ir::Kernel;

/// A pass: a name and the function that rewrites a kernel in place.
pub type Pass = (&'static str, fn(&mut Kernel));

/// The pipeline, in order.
pub const PIPELINE: &[Pass] = &[("widen_offsets", widen_offsets), ("cse", cse), ("dce", dce)];

/// Runs every pass of [`PIPELINE`], in order.
pub fn run_all(k: &mut Kernel) {
    for (_, pass) in PIPELINE {
        pass(k);
    }
}
