//! The NVPTX backend: every test kernel compiles to PTX that `ptxas` accepts for sm_80 and
//! sm_90, with no calls to undefined functions and no register spills; alignment
//! specialisation turns on vector memory access.

use crate::nvptx_ptxas::{self, PtxasStats};
use kiln_compiler::backend::nvptx::{compile_ptx, emit_llvm, Arch, PtxKernel, PtxOptions};
use kiln_compiler::{compile_to_ir, ir, Defines, Source};

/// Kernels covering every IR op, as (name, source).
const KERNELS: &[(&str, &str)] = &[
    ("add", include_str!("../../../ops/kernels/add.kiln")),
    ("rmsnorm", include_str!("../../../ops/kernels/rmsnorm.kiln")),
    (
        "cross_entropy",
        include_str!("../../../ops/kernels/cross_entropy.kiln"),
    ),
    ("swiglu", include_str!("../../../ops/kernels/swiglu.kiln")),
    ("rope", include_str!("../../../ops/kernels/rope.kiln")),
    ("adamw", include_str!("../../../ops/kernels/adamw.kiln")),
    ("gemm", include_str!("../../../ops/kernels/gemm.kiln")),
    (
        "broadcast2d",
        include_str!("nvptx_kernels/broadcast2d.kiln"),
    ),
    ("matmul", include_str!("nvptx_kernels/matmul.kiln")),
    ("dot", include_str!("nvptx_kernels/dot.kiln")),
    ("atomics", include_str!("nvptx_kernels/atomics.kiln")),
    ("branch", include_str!("nvptx_kernels/branch.kiln")),
    ("misc", include_str!("nvptx_kernels/misc.kiln")),
    ("types", include_str!("nvptx_kernels/types.kiln")),
    ("rows", include_str!("nvptx_kernels/rows.kiln")),
];

pub(crate) fn kernels(name: &str, text: &str) -> Vec<ir::Kernel> {
    let src = Source::new(format!("{name}.kiln"), text);
    compile_to_ir(&src, &Defines::new()).unwrap_or_else(|e| panic!("{e}"))
}

fn compile(k: &ir::Kernel, arch: Arch, divisible_by_16: u64) -> PtxKernel {
    let opts = PtxOptions {
        arch,
        num_warps: 4,
        divisible_by_16,
        num_stages: 1,
        bounds_checks: false,
    };
    compile_ptx(k, &opts).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn check_ptx(k: &ir::Kernel, p: &PtxKernel) {
    assert!(p.ptx.contains(&format!(".entry {}(", k.name)), "{}", p.ptx);
    assert!(
        !p.ptx.contains(".extern .func"),
        "call to an undefined function:\n{}",
        p.ptx
    );
    assert_eq!(p.threads_per_block, 128);
    assert!(p.ptx.contains(".maxntid 128"), "{}", p.ptx);
}

#[test]
fn every_kernel_assembles_without_spills() {
    let ptxas = nvptx_ptxas::require();
    let mut report = vec![];
    for (file, text) in KERNELS {
        for k in kernels(file, text) {
            for (arch, mask) in [
                (Arch::Sm80, 0),
                (Arch::Sm90, 0),
                (Arch::Sm90, u64::MAX),
                (Arch::Sm90a, u64::MAX),
            ] {
                let start = std::time::Instant::now();
                let p = compile(&k, arch, mask);
                let ms = start.elapsed().as_secs_f64() * 1e3;
                check_ptx(&k, &p);
                dump(&k.name, arch, mask != 0, &p.ptx);
                let Some(ptxas) = &ptxas else { continue };
                let s: PtxasStats = nvptx_ptxas::assemble(ptxas, &p.ptx, arch.name(), &k.name);
                report.push(format!(
                    "{:<24} {} aligned={:<5} regs {:>3} spill {}/{} stack {} smem {:>4} compile {ms:.1} ms",
                    k.name,
                    arch.name(),
                    mask != 0,
                    s.registers,
                    s.spill_store_bytes,
                    s.spill_load_bytes,
                    s.stack_bytes,
                    p.shared_bytes
                ));
                // Without alignment facts the GEMM loads its operands element by element, and
                // its default 128 x 128 tile then needs more registers than there are.
                if k.name == "gemm" && mask == 0 {
                    continue;
                }
                assert_eq!(
                    (s.spill_store_bytes, s.spill_load_bytes),
                    (0, 0),
                    "{} spills on {}",
                    k.name,
                    arch.name()
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// With `KILN_PTX_DUMP=dir`, writes `dir/{kernel}.{arch}.{aligned|plain}.ptx` (for running the
/// kernels on a GPU with `nvptx_gpu.py`).
fn dump(name: &str, arch: Arch, aligned: bool, ptx: &str) {
    if let Ok(dir) = std::env::var("KILN_PTX_DUMP") {
        std::fs::create_dir_all(&dir).unwrap();
        let kind = if aligned { "aligned" } else { "plain" };
        let path = format!("{dir}/{name}.{}.{kind}.ptx", arch.name());
        std::fs::write(path, ptx).unwrap();
    }
}

/// Other warp counts change which tiles are replicated and whether reductions cross warps.
#[test]
fn every_kernel_assembles_with_1_and_8_warps() {
    let ptxas = nvptx_ptxas::require();
    for (file, text) in KERNELS {
        for k in kernels(file, text) {
            for num_warps in [1, 8] {
                let opts = PtxOptions {
                    arch: Arch::Sm80,
                    num_warps,
                    divisible_by_16: u64::MAX,
                    num_stages: 1,
                    bounds_checks: false,
                };
                let p = compile_ptx(&k, &opts).unwrap_or_else(|e| panic!("{e}"));
                assert!(!p.ptx.contains(".extern .func"), "{}", p.ptx);
                assert_eq!(p.threads_per_block, 32 * num_warps);
                if let Some(ptxas) = &ptxas {
                    let name = format!("{}_w{num_warps}", k.name);
                    nvptx_ptxas::assemble(ptxas, &p.ptx, "sm_80", &name);
                }
            }
        }
    }
}

/// With a loop pipeline, every kernel still assembles without spills; the loops that load
/// tiles for tensor-core dots (when the launch is aligned) copy them with `cp.async`, wait for
/// `stages - 2` pending groups and drain the ring after the loop.
#[test]
fn pipelined_loops_assemble() {
    let ptxas = nvptx_ptxas::require();
    for (file, text) in KERNELS {
        for k in kernels(file, text) {
            for stages in [2, 3, 4] {
                let opts = PtxOptions {
                    num_stages: stages,
                    divisible_by_16: u64::MAX,
                    ..PtxOptions::new(Arch::Sm90, 4)
                };
                let p = compile_ptx(&k, &opts).unwrap_or_else(|e| panic!("{e}"));
                check_ptx(&k, &p);
                let copies = p.ptx.contains("cp.async.cg.shared.global")
                    || p.ptx.contains("cp.async.ca.shared.global");
                let piped = matches!(k.name.as_str(), "matmul" | "gemm" | "dot_loop");
                assert_eq!(copies, piped, "{} with {stages} stages:\n{}", k.name, p.ptx);
                if piped {
                    let wait = format!("cp.async.wait_group {};", stages - 2);
                    assert!(p.ptx.contains(&wait), "{}", p.ptx);
                    assert!(p.ptx.contains("cp.async.wait_all;"), "{}", p.ptx);
                }
                if let Some(ptxas) = &ptxas {
                    let name = format!("{}_s{stages}", k.name);
                    let s = nvptx_ptxas::assemble(ptxas, &p.ptx, "sm_90", &name);
                    assert_eq!((s.spill_store_bytes, s.spill_load_bytes), (0, 0), "{name}");
                }
            }
        }
    }
}

/// On sm_90a, dots whose accumulator is one 16-row atom per warp in whole warpgroups run as
/// `wgmma` (with the pipeline's copies fenced for the asynchronous proxy, and the GEMM's
/// accumulation left in flight across iterations); other tiles, and other targets, keep
/// `mma.sync`.
#[test]
fn wgmma_runs_the_dots_that_fill_warpgroups() {
    let gemm = |bm: i64, warps: u32, arch: Arch| {
        let src = Source::new("gemm.kiln", crate::nvptx_dot::GEMM);
        let defines: Defines = [("BM".to_string(), kiln_compiler::ConstValue::Int(bm))].into();
        let k = compile_to_ir(&src, &defines).unwrap().remove(0);
        let opts = PtxOptions {
            num_stages: 3,
            divisible_by_16: u64::MAX,
            ..PtxOptions::new(arch, warps)
        };
        compile_ptx(&k, &opts).unwrap().ptx
    };
    let ptxas = nvptx_ptxas::require();
    for (bm, warps, arch, wgmma) in [
        (128, 8, Arch::Sm90a, true),
        (64, 4, Arch::Sm90a, true),
        (128, 4, Arch::Sm90a, false),
        (128, 8, Arch::Sm90, false),
        (128, 8, Arch::Sm80, false),
    ] {
        let ptx = gemm(bm, warps, arch);
        let what = format!("BM={bm} w{warps} {}", arch.name());
        assert!(ptx.contains(&format!(".target {}", arch.name())), "{what}");
        assert_eq!(ptx.contains("wgmma.mma_async"), wgmma, "{what}");
        assert_eq!(ptx.contains("mma.sync"), !wgmma, "{what}");
        assert_eq!(ptx.contains("fence.proxy.async"), wgmma, "{what}");
        // The accumulation stays in flight across iterations; with 3 stages the copies then
        // run one iteration ahead (none pending at the top of an iteration).
        let in_flight = ptx.contains("wgmma.wait_group.sync.aligned 1;");
        assert_eq!(in_flight, wgmma, "{what}");
        let copy_wait = if wgmma { 0 } else { 1 };
        let wait = format!("cp.async.wait_group {copy_wait};");
        assert!(ptx.contains(&wait), "{what}");
        if let Some(ptxas) = &ptxas {
            let name = format!("gemm_{bm}_w{warps}_{}", arch.name());
            let s = nvptx_ptxas::assemble(ptxas, &ptx, arch.name(), &name);
            assert_eq!((s.spill_store_bytes, s.spill_load_bytes), (0, 0), "{what}");
        }
    }
}

/// Loads whose addresses depend on a loop-carried value, or that are also used outside a
/// dot, stay ordinary loads; the ring is sized by the tiles of one iteration times the stages.
#[test]
fn pipeline_takes_only_loads_it_can_run_ahead() {
    let k = &kernels("pipeline", PIPELINE)[0];
    let opts = |stages| PtxOptions {
        num_stages: stages,
        divisible_by_16: u64::MAX,
        ..PtxOptions::new(Arch::Sm90, 4)
    };
    let off = compile_ptx(k, &opts(1)).unwrap();
    let on = compile_ptx(k, &opts(3)).unwrap();
    // Only `y` is copied ahead: 32 x 32 bf16 per stage, 2 KiB, in 16-byte pieces over 128
    // threads = one copy per thread per stage.
    let copies = on.ptx.matches("cp.async.cg.shared.global").count();
    assert_eq!(copies, 3, "{}", on.ptx);
    // Without the pipeline the dot stages both operands in the scratch buffer; with it, only
    // `x`, and the ring holds three copies of `y`.
    let tile = 32 * 32 * 2;
    assert_eq!(off.shared_bytes, 2 * tile);
    assert_eq!(on.shared_bytes, tile + 3 * tile);
}

const PIPELINE: &str = "
kernel pipeline(a: *bf16, b: *bf16, c: *mut f32, k: i32) {
    let r = range(32);
    let mut acc = zeros([32, 32], f32);
    let mut p = a + r[:, None] * k + r[None, :];
    for k0 in 0..k step 32 {
        // Carried pointer: cannot be computed ahead.
        let x = load(p);
        let y = load(b + (k0 + r)[:, None] * 32 + r[None, :]);
        // Also used outside the dot: stays in registers.
        let z = load(b + (k0 + r)[:, None] * 32 + r[None, :] + 1);
        acc = dot(x, y, acc) + z as f32;
        p = p + 32;
    }
    store(c + r[:, None] * 32 + r[None, :], acc);
}
";

#[test]
fn vector_access_needs_alignment_facts() {
    let add = &kernels("add", KERNELS[0].1)[0];
    let plain = compile(add, Arch::Sm90, 0).ptx;
    let aligned = compile(add, Arch::Sm90, u64::MAX).ptx;
    assert!(!plain.contains("ld.global.v"), "{plain}");
    assert!(!plain.contains("st.global.v"), "{plain}");
    assert!(aligned.contains("ld.global.v"), "{aligned}");
    assert!(aligned.contains("st.global.v"), "{aligned}");

    let scale = &kernels("scale", SCALE)[0];
    let aligned = compile(scale, Arch::Sm90, u64::MAX).ptx;
    assert!(
        aligned.contains("ld.global.v4.f32") || aligned.contains("ld.global.v4.b32"),
        "{aligned}"
    );
    assert!(
        aligned.contains("st.global.v4.f32") || aligned.contains("st.global.v4.b32"),
        "{aligned}"
    );
    // Only the pointer aligned, not `n`: the mask may split a vector, so no vectors.
    let ptr_only = compile(scale, Arch::Sm90, 0b011).ptx;
    assert!(!ptr_only.contains("ld.global.v"), "{ptr_only}");
}

const SCALE: &str = "
kernel scale<BLOCK: i32 = 1024>(x: *f32, y: *mut f32, n: i32, s: f32) {
    let offs = program_id(0) * BLOCK + range(BLOCK);
    let m = offs < n;
    store(y + offs, load(x + offs, mask: m) * s, mask: m);
}
";

#[test]
fn llvm_ir_has_kernel_conventions() {
    let k = &kernels("rmsnorm", KERNELS[1].1)[0];
    let opts = PtxOptions::new(Arch::Sm80, 4);
    let ll = emit_llvm(k, &opts).unwrap();
    assert!(ll.contains("ptx_kernel"), "{ll}");
    assert!(ll.contains("!\"maxntidx\", i32 128"), "{ll}");
    assert!(ll.contains("nvptx64-nvidia-cuda"), "{ll}");
}

#[test]
fn bad_warp_count_is_an_error() {
    let k = &kernels("add", KERNELS[0].1)[0];
    assert!(compile_ptx(k, &PtxOptions::new(Arch::Sm80, 3)).is_err());
}

#[test]
fn ptxas_stats_parse() {
    let text = "ptxas info    : Used 18 registers, used 1 barriers, 380 bytes cmem[0]\n\
                ptxas info    : Function properties for add\n    \
                8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n";
    let s = nvptx_ptxas::parse_stats(text).unwrap();
    assert_eq!(
        s,
        PtxasStats {
            registers: 18,
            spill_store_bytes: 4,
            spill_load_bytes: 12,
            stack_bytes: 8
        }
    );
}

#[test]
fn divisibility_mask_from_arguments() {
    use kiln_compiler::backend::nvptx::divisibility_mask;
    use kiln_compiler::ir::{Param, ParamKind};
    use kiln_compiler::DType;
    let param = |kind| Param {
        name: "p".into(),
        kind,
    };
    let params = [
        param(ParamKind::Ptr {
            pointee: DType::F32,
            mutable: false,
        }),
        param(ParamKind::Ptr {
            pointee: DType::F32,
            mutable: true,
        }),
        param(ParamKind::Scalar(DType::I32)),
        param(ParamKind::Scalar(DType::I64)),
        param(ParamKind::Scalar(DType::F32)),
    ];
    let mask = divisibility_mask(
        &params,
        &[0x7f00_0000_1000, 0x7f00_0000_1004, 4096, 1000, 0],
    );
    assert_eq!(mask, 0b00101);
}
