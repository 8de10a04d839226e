//! Passes over the tile IR: a short, named list run in a fixed order by [`run_all`]. Each pass
//! keeps the kernel valid: in debug builds (and so in every test) the IR is verified
//! (`ir::verify`) before the first pass and after each one, and a pass that breaks it is named.
//! Each can be run alone in tests, and [`run_observed`] shows the IR after each pass
//! (`kiln compile --print-after-all`).

mod cse;
mod dce;
mod widen_offsets;

pub use cse::cse;
pub use dce::dce;
pub use widen_offsets::widen_offsets;

use crate::ir::{self, Kernel};

/// A pass: a name and the function that rewrites a kernel in place.
pub type Pass = (&'static str, fn(&mut Kernel));

/// The pipeline, in order.
pub const PIPELINE: &[Pass] = &[("widen_offsets", widen_offsets), ("cse", cse), ("dce", dce)];

/// Runs every pass of [`PIPELINE`], in order.
pub fn run_all(k: &mut Kernel) {
    run_observed(k, |_, _| {});
}

/// Runs every pass of [`PIPELINE`], in order, calling `after(pass, kernel)` once each pass is
/// done (and the IR verified, in debug builds).
///
/// # Panics
/// In debug builds, when the checker's IR or a pass's output does not verify: a compiler bug,
/// never a property of the program being compiled.
pub fn run_observed(k: &mut Kernel, after: impl FnMut(&str, &Kernel)) {
    run_passes(k, PIPELINE, after);
}

/// Runs `passes` in order, verifying the IR before the first and after each one in debug
/// builds, and calling `after(pass, kernel)` after each.
///
/// # Panics
/// As [`run_observed`].
pub fn run_passes(k: &mut Kernel, passes: &[Pass], mut after: impl FnMut(&str, &Kernel)) {
    verify_after(k, "the checker");
    for (name, pass) in passes {
        pass(k);
        verify_after(k, &format!("pass `{name}`"));
        after(name, k);
    }
}

/// The IR after each pass of [`PIPELINE`], as `kiln compile --print-after-all` prints it: the
/// checker's IR, then one section per pass, each headed by a `; after NAME` comment line; a
/// pass that changed nothing is the line `; after NAME: no change` alone.
pub fn print_after_all(k: &Kernel) -> String {
    let mut k = k.clone();
    let mut last = ir::print_kernel(&k);
    let mut out = format!("; after check\n{last}");
    run_observed(&mut k, |name, k| {
        let text = ir::print_kernel(k);
        if text == last {
            out += &format!("\n; after {name}: no change\n");
        } else {
            out += &format!("\n; after {name}\n{text}");
            last = text;
        }
    });
    out
}

/// Verifies `k` in debug builds; `stage` names what produced it.
fn verify_after(k: &Kernel, stage: &str) {
    if cfg!(debug_assertions) {
        if let Err(e) = ir::verify(k) {
            panic!("{stage} produced invalid IR: {e}\n{}", ir::print_kernel(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Kernel {
        ir::parse_kernel(
            "kernel @k(%y: *mut f32) {
               %0 = const 1.0 : <4xf32>
               %1 = splat %y : <4x*f32>
               %2 = range 4 : <4xi32>
               %3 = ptr_add %1, %2 : <4x*f32>
               store %3, %0
             }
",
        )
        .unwrap()
    }

    /// Drops the first instruction, leaving its result used but undefined.
    fn breaks_the_ir(k: &mut Kernel) {
        k.body.insts.remove(0);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "pass `breaker` produced invalid IR")
    )]
    fn a_pass_that_breaks_the_ir_is_named() {
        run_passes(&mut kernel(), &[("breaker", breaks_the_ir)], |_, _| {});
    }

    #[test]
    fn a_pass_that_changes_nothing_says_so() {
        let k = ir::parse_kernel(
            "kernel @k(%y: *mut f32, %o: i64) {
               %0 = const 1.0 : <4xf32>
               %1 = splat %y : <4x*f32>
               %2 = splat %o : <4xi64>
               %3 = ptr_add %1, %2 : <4x*f32>
               store %3, %0
             }
",
        )
        .unwrap();
        let text = print_after_all(&k);
        // Nothing to widen, merge or drop.
        for pass in ["widen_offsets", "cse", "dce"] {
            assert!(
                text.contains(&format!("; after {pass}: no change\n")),
                "{text}"
            );
        }
        assert_eq!(text.matches("kernel @k").count(), 1, "{text}");
    }

    #[test]
    fn print_after_all_shows_every_pass() {
        let text = print_after_all(&kernel());
        let headers: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("; after "))
            .map(|l| l.trim_end_matches(": no change"))
            .collect();
        assert_eq!(headers, ["check", "widen_offsets", "cse", "dce"]);
    }
}
