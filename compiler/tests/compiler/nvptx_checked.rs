//! Bounds-checked PTX ([`PtxOptions::bounds_checks`]): every shipped kernel compiles with the
//! checks and assembles; the entry takes `bounds` and `fault` after its own parameters; every
//! global access compares its address with the buffer bounds and can claim the fault record.
//! Unchecked PTX stays as it was (the snapshots of `nvptx_snapshots` and `nvptx`).

use crate::nvptx::{check_ptx, kernels};
use crate::nvptx_ptxas;
use kiln_compiler::backend::nvptx::{compile_ptx, emit_llvm, Arch, PtxKernel, PtxOptions};
use kiln_compiler::ir;

/// One load and one store, both masked.
const COPY: &str = "
kernel copy<BLOCK: i32 = 512>(x: *f32, y: *mut f32, n: i32) {
    let offs = program_id(0) * BLOCK + range(BLOCK);
    let m = offs < n;
    store(y + offs, load(x + offs, mask: m, other: 1.0), mask: m);
}
";

/// A pointer that may point into either of two buffers, and an atomic add.
const EITHER: &str = "
kernel either(x: *f32, z: *f32, out: *mut f32, c: i32) {
    let mut p = x;
    if c > 0 {
        p = z;
    }
    atomic_add(out + range(128), load(p + range(128)));
}
";

fn options(arch: Arch, divisible_by_16: u64, num_stages: u32, bounds_checks: bool) -> PtxOptions {
    PtxOptions {
        divisible_by_16,
        num_stages,
        bounds_checks,
        ..PtxOptions::new(arch, 4)
    }
}

fn compile(k: &ir::Kernel, opts: &PtxOptions) -> PtxKernel {
    compile_ptx(k, opts).unwrap_or_else(|e| panic!("{}: {e}", k.name))
}

/// The parameter declarations of the entry, in order.
fn entry_params<'p>(ptx: &'p str, name: &str) -> Vec<&'p str> {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no entry {name}:\n{ptx}"));
    let list = &ptx[start..];
    let list = &list[list.find('(').unwrap() + 1..list.find(')').unwrap()];
    list.split(',').map(str::trim).collect()
}

fn unsigned_64_bit_compares(ptx: &str) -> usize {
    ptx.lines()
        .filter(|l| l.trim_start().starts_with("setp.") && l.contains(".u64"))
        .count()
}

/// Every `.kiln` file in `ops/kernels`, as (file name, text).
fn shipped_kernels() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/kernels");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kiln"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no kernels in {dir}");
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Every shipped kernel compiles with checks on sm_80 and sm_90a (with and without alignment
/// facts, with and without the loop pipeline) and assembles; its entry has the two extra
/// `u64` parameters and at least one fault record.
#[test]
fn shipped_kernels_assemble_with_bounds_checks() {
    let ptxas = nvptx_ptxas::require();
    let mut count = 0;
    for (file, text) in shipped_kernels() {
        for k in kernels(&file, &text) {
            for (arch, mask, stages) in [
                (Arch::Sm80, 0, 1),
                (Arch::Sm80, u64::MAX, 3),
                (Arch::Sm90a, 0, 1),
                (Arch::Sm90a, u64::MAX, 3),
            ] {
                let p = compile(&k, &options(arch, mask, stages, true));
                check_ptx(&k, &p);
                let what = format!("{} {} aligned={}", k.name, arch.name(), mask != 0);
                let params = entry_params(&p.ptx, &k.name);
                assert_eq!(params.len(), k.params.len() + 2, "{what}: {params:?}");
                for extra in &params[k.params.len()..] {
                    assert!(extra.starts_with(".param .u64 "), "{what}: {extra}");
                }
                assert!(p.ptx.contains("atom.global.cas.b64"), "{what}:\n{}", p.ptx);
                if let Some(ptxas) = &ptxas {
                    let name = format!("{}_checked_{}", k.name, u8::from(mask != 0));
                    nvptx_ptxas::assemble(ptxas, &p.ptx, arch.name(), &name);
                }
                count += 1;
            }
        }
    }
    assert!(count >= 4 * 20, "only {count} kernels");
}

/// Unchecked kernels keep their own parameters and have no checks.
#[test]
fn unchecked_kernels_have_no_checks() {
    for (file, text) in shipped_kernels() {
        for k in kernels(&file, &text) {
            let p = compile(&k, &options(Arch::Sm90a, u64::MAX, 3, false));
            assert_eq!(entry_params(&p.ptx, &k.name).len(), k.params.len());
            assert!(!p.ptx.contains("atom.global.cas"), "{}", k.name);
        }
    }
}

/// A kernel with one load and one store has a fault record for each (in every vector width
/// it is compiled to), compares each address with both ends of its buffer, and records kinds 1
/// (load) and 2 (store).
#[test]
fn every_access_is_checked() {
    let k = &kernels("copy", COPY)[0];
    let ptxas = nvptx_ptxas::require();
    for mask in [0, u64::MAX] {
        let p = compile(k, &options(Arch::Sm80, mask, 1, true));
        let what = format!("aligned={}:\n{}", mask != 0, p.ptx);
        // 512 elements over 128 threads: 4 registers each, one vector or 4 scalars.
        let accesses = if mask == 0 { 2 * 4 } else { 2 };
        let sites = p.ptx.matches("atom.global.cas.b64").count();
        assert!(sites >= accesses, "{sites} fault sites, {what}");
        // `off < len` folds away where LLVM proves `off + size` cannot wrap; `off + size <=
        // len` stays, once per access at least.
        let plain = compile(k, &options(Arch::Sm80, mask, 1, false)).ptx;
        let compares = unsigned_64_bit_compares(&p.ptx) - unsigned_64_bit_compares(&plain);
        assert!(compares >= accesses, "{compares} compares, {what}");
        // The lengths of `x` and `y` come from `bounds`.
        assert!(p.ptx.matches("ld.global.u64").count() >= 2, "{what}");
        if let Some(ptxas) = &ptxas {
            nvptx_ptxas::assemble(ptxas, &p.ptx, "sm_80", &format!("copy_checked_{mask}"));
        }
        let ll = emit_llvm(k, &options(Arch::Sm80, mask, 1, true)).unwrap();
        for kind in [1, 2] {
            assert!(
                ll.contains(&format!("store i64 {kind}, ptr addrspace(1)")),
                "{ll}"
            );
        }
        assert!(!plain.contains("atom.global.cas"), "{plain}");
    }
}

/// A pointer into one of two buffers is in bounds if it is inside either; its fault names the
/// first. Atomic adds record kind 3.
#[test]
fn pointers_into_either_buffer_check_both() {
    let k = &kernels("either", EITHER)[0];
    let ll = emit_llvm(k, &options(Arch::Sm90a, 0, 1, true)).unwrap();
    // The load checks `x` and `z`, the atomic `out`: three lengths.
    assert_eq!(ll.matches("load i64, ptr addrspace(1)").count(), 3, "{ll}");
    assert!(ll.contains("store i64 3, ptr addrspace(1)"), "{ll}");
    // Faults of the load name `x` (parameter 0, recorded as 1); of the atomic, `out`.
    assert!(ll.contains("i64 0, i64 1 monotonic"), "{ll}");
    assert!(ll.contains("i64 0, i64 3 monotonic"), "{ll}");
    if let Some(ptxas) = nvptx_ptxas::require() {
        let p = compile(k, &options(Arch::Sm90a, 0, 1, true));
        nvptx_ptxas::assemble(&ptxas, &p.ptx, "sm_90a", "either_checked");
    }
}

/// The loop pipeline stays on under checks: its `cp.async` copies are checked too.
#[test]
fn pipelined_copies_are_checked() {
    let file = shipped_kernels()
        .into_iter()
        .find(|(f, _)| f == "gemm")
        .unwrap();
    let k = &kernels(&file.0, &file.1)[0];
    let checked = compile(k, &options(Arch::Sm90a, u64::MAX, 3, true)).ptx;
    let plain = compile(k, &options(Arch::Sm90a, u64::MAX, 3, false)).ptx;
    let copies = |ptx: &str| ptx.matches("cp.async.cg.shared.global").count();
    assert!(copies(&plain) > 0);
    assert_eq!(copies(&checked), copies(&plain));
    // A fault record per copy, and per element the epilogue stores.
    assert!(checked.matches("atom.global.cas.b64").count() >= copies(&plain));
}
