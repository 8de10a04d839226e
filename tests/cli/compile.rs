//! `kiln compile` as a kernel author runs it: the decision printers and the papercuts of
//! issue 18 (several kernels as one PTX module, notes on optimisations that do not apply).

use super::{kiln, stderr};
use std::path::{Path, PathBuf};

fn kernel_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ops/kernels")
        .join(name)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn print_after_all_shows_each_pass_on_stderr() {
    let file = kernel_file("add.kiln");
    let out = kiln(&[
        "compile",
        file.to_str().unwrap(),
        "--emit",
        "ir",
        "--print-after-all",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for pass in ["check", "widen_offsets", "cse", "dce"] {
        assert!(err.contains(&format!("; after {pass}")), "{pass}:\n{err}");
    }
    assert!(stdout(&out).contains("kernel @add"));
}

#[test]
fn emit_layouts_annotates_the_ir() {
    let file = kernel_file("add.kiln");
    let out = kiln(&["compile", file.to_str().unwrap(), "--emit", "layouts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("; layouts: "), "{text}");
    assert!(text.contains("cpu: fused"), "{text}");
}

#[cfg(feature = "cuda")]
#[test]
fn several_kernels_are_one_ptx_module() {
    let file = kernel_file("add.kiln");
    let out = kiln(&["compile", file.to_str().unwrap(), "--emit", "ptx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ptx = stdout(&out);
    assert_eq!(ptx.matches(".version").count(), 1, "{ptx}");
    assert_eq!(ptx.matches(".entry").count(), 2, "{ptx}");
}

#[cfg(feature = "cuda")]
#[test]
fn unpipelined_loads_are_counted_and_v_says_why() {
    let file = kernel_file("gemm.kiln");
    let path = file.to_str().unwrap();
    let args = [
        "compile",
        path,
        "--emit",
        "ptx",
        "--arch",
        "sm_90a",
        "--num-stages",
        "3",
    ];
    let quiet = kiln(&args);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(
        stderr(&quiet).contains("-v says which and why"),
        "{}",
        stderr(&quiet)
    );
    let verbose = kiln(&[&args[..], &["-v"]].concat());
    let err = stderr(&verbose);
    assert!(err.contains("note: kernel `gemm`"), "{err}");
    assert!(err.contains("load is not pipelined"), "{err}");
    assert!(err.contains("--aligned"), "{err}");
}
