//! The papercuts of issue 18, one test each: what a new user tripped over.

use kiln_compiler::backend::cranelift::{compile_with, CpuOptions};
use kiln_compiler::{compile_to_ir, Defines, Source};

/// A loop whose step is known only at run time: `y[0]` counts its iterations.
const COUNT_ITERATIONS: &str = "kernel count(y: *mut i32, n: i32, s: i32) {
    let mut c = 0;
    for i in 0..n step s { c += 1; }
    store(y, c);
}";

#[test]
fn a_run_time_step_of_zero_or_less_runs_the_body_zero_times_on_the_cpu() {
    let ks = compile_to_ir(&Source::new("t.kiln", COUNT_ITERATIONS), &Defines::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let k = compile_with(
        &ks[0],
        CpuOptions {
            bounds_checks: false,
        },
    )
    .unwrap();
    for (step, want) in [(3, 4), (1, 10), (0, 0), (-1, 0), (i32::MIN, 0)] {
        let mut y = [-7i32];
        let args = [y.as_mut_ptr() as u64, 10, step as u32 as u64];
        // SAFETY: `y` outlives the call and holds the one element the kernel writes.
        let fault = unsafe { k.run_program(&args, &[4, 0, 0], [0, 0, 0], [1, 1, 1]) }.unwrap();
        assert_eq!(fault, None);
        assert_eq!(y[0], want, "step {step}");
    }
}

#[test]
fn a_constant_step_of_zero_or_less_is_refused() {
    let src = "kernel k(y: *mut i32) { for i in 0..4 step 0 { store(y, i); } }";
    let e = kiln_compiler::check(&Source::new("t.kiln", src), &Defines::new()).unwrap_err();
    assert!(
        e.to_string().contains("the loop step must be positive"),
        "{e}"
    );
}

/// The language reference says what a run-time step <= 0 does.
#[test]
fn the_run_time_step_rule_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lang = std::fs::read_to_string(root.join("docs/LANGUAGE.md")).unwrap();
    assert!(lang.contains("a step of 0 or less known only at run time runs the body zero times"));
}

#[cfg(feature = "nvptx")]
mod gpu {
    use super::COUNT_ITERATIONS;
    use kiln_compiler::backend::nvptx::{compile_ptx_module, emit_llvm, Arch, PtxOptions};
    use kiln_compiler::{compile_to_ir, Defines, Source};

    /// Every shipped file of several kernels becomes one PTX module with one `.entry` per
    /// kernel, which `ptxas` assembles as it is (`kiln compile --emit ptx` prints it).
    #[test]
    fn a_file_of_several_kernels_is_one_ptx_module_ptxas_accepts() {
        let Some(ptxas) = crate::nvptx_ptxas::require() else {
            return;
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
        for file in ["rmsnorm.kiln", "cross_entropy.kiln", "add.kiln"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let kernels = compile_to_ir(&Source::new(file, text), &Defines::new()).unwrap();
            assert!(kernels.len() > 1, "{file}");
            let opts = PtxOptions::new(Arch::Sm90, 4);
            let with: Vec<_> = kernels.iter().map(|k| (k, opts)).collect();
            let ptx = compile_ptx_module(&with).unwrap();
            assert_eq!(ptx.matches(".version").count(), 1, "{file}");
            assert_eq!(ptx.matches(".entry").count(), kernels.len(), "{file}");
            for k in &kernels {
                assert!(ptx.contains(&format!(".entry {}(", k.name)), "{}", k.name);
            }
            crate::nvptx_ptxas::assemble(&ptxas, &ptx, "sm_90", file);
        }
    }

    #[test]
    fn one_ptx_module_has_one_target() {
        let ks = compile_to_ir(&Source::new("t.kiln", COUNT_ITERATIONS), &Defines::new()).unwrap();
        let e = compile_ptx_module(&[
            (&ks[0], PtxOptions::new(Arch::Sm90, 4)),
            (&ks[0], PtxOptions::new(Arch::Sm80, 4)),
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("one PTX module has one target"),
            "{e}"
        );
    }

    /// On the GPU too, a run-time step starts the loop at its end unless it is positive.
    #[test]
    fn a_run_time_step_is_guarded_on_the_gpu() {
        let ks = compile_to_ir(&Source::new("t.kiln", COUNT_ITERATIONS), &Defines::new()).unwrap();
        let llvm = emit_llvm(&ks[0], &PtxOptions::new(Arch::Sm90, 4)).unwrap();
        assert!(llvm.contains("icmp sgt i32 %2, 0"), "{llvm}");
        assert!(llvm.contains("select i1"), "{llvm}");
    }
}

/// The README says how data of each element type moves between Rust and a kernel (bf16 as
/// `half::bf16` slices), names every `DType`, and documents `--emit layouts` and
/// `--print-after-all`.
#[test]
fn the_readme_documents_the_rust_side_types_and_the_decision_printers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("`half::bf16` slices"));
    for d in kiln_compiler::DType::ALL {
        assert!(readme.contains(&format!("`DType::{d:?}`")), "DType::{d:?}");
        assert!(readme.contains(&format!("`{}`", d.name())), "{}", d.name());
    }
    for flag in ["--emit layouts", "--print-after-all", "`-v`"] {
        assert!(readme.contains(flag), "{flag}");
    }
}
