//! Valid programs at the edges of the GPU backend's limits compile to PTX that `ptxas` accepts,
//! in bounded time, or get a clear error: `wgmma` only where its accumulators fit the register
//! budget, loop pipelines over `i64` bounds, tiles too large for a thread's registers,
//! reductions along long axes, and pipelines with too many stages or too much shared memory.

use crate::nvptx::check_ptx;
use crate::nvptx_ptxas;
use kiln_compiler::backend::nvptx::assign::{register_budget, warpgroup_accumulators_fit};
use kiln_compiler::backend::nvptx::{
    compile_ptx, emit_llvm, Arch, PtxKernel, PtxOptions, MAX_STAGES, MAX_TILE_REGS,
};
use kiln_compiler::backend::BackendError;
use kiln_compiler::{compile_to_ir, ir, ConstValue, Defines, Source};
use std::time::{Duration, Instant};

/// The shipped GEMM.
const GEMM: &str = include_str!("../../../ops/kernels/gemm.kiln");

/// One 64 x 256 tile from a single 16-deep product: on sm_90a a `wgmma.m64n256k16` whose
/// accumulator is 128 registers per thread of its warpgroup.
const WIDE: &str = "
kernel wide(a: *bf16, b: *bf16, c: *mut f32) {
    let x = load(a + range(64)[:, None] * 16 + range(16)[None, :]);
    let y = load(b + range(16)[:, None] * 256 + range(256)[None, :]);
    store(c + range(64)[:, None] * 256 + range(256)[None, :], dot(x, y));
}
";

const ARCHS: [Arch; 3] = [Arch::Sm80, Arch::Sm90, Arch::Sm90a];
const WARPS: [u32; 6] = [1, 2, 4, 8, 16, 32];

/// Generous, for a debug build on a loaded machine: what used to take minutes must not.
const FAST: Duration = Duration::from_secs(20);
/// For a refusal, which must come before anything is unrolled.
const INSTANT: Duration = Duration::from_secs(2);

fn kernel(name: &str, src: &str, defines: &[(&str, i64)]) -> ir::Kernel {
    let defines: Defines = defines
        .iter()
        .map(|&(n, v)| (n.to_string(), ConstValue::Int(v)))
        .collect();
    compile_to_ir(&Source::new(format!("{name}.kiln"), src), &defines)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

/// Options as `kiln compile --aligned` makes them.
fn aligned(arch: Arch, num_warps: u32, num_stages: u32) -> PtxOptions {
    PtxOptions {
        divisible_by_16: !0,
        num_stages,
        ..PtxOptions::new(arch, num_warps)
    }
}

/// Checks the entry of `p` and fails the test unless `ptxas` accepts it (when installed).
fn assemble(k: &ir::Kernel, p: &PtxKernel, opts: &PtxOptions, name: &str) {
    if opts.num_warps == 4 {
        check_ptx(k, p);
    }
    let threads = 32 * opts.num_warps;
    assert!(p.ptx.contains(&format!(".maxntid {threads}")), "{name}");
    assert!(!p.ptx.contains(".extern .func"), "{name}");
    if let Some(ptxas) = nvptx_ptxas::require() {
        nvptx_ptxas::assemble(&ptxas, &p.ptx, opts.arch.name(), name);
    }
}

/// Compiles within [`FAST`].
fn compile_timed(k: &ir::Kernel, opts: &PtxOptions, what: &str) -> Result<PtxKernel, BackendError> {
    let start = Instant::now();
    let r = compile_ptx(k, opts);
    let took = start.elapsed();
    assert!(took < FAST, "{what} took {took:?}");
    r
}

/// The error of a refused compilation, which must come within [`INSTANT`].
fn refused(k: &ir::Kernel, opts: &PtxOptions, what: &str) -> String {
    let start = Instant::now();
    let r = compile_ptx(k, opts);
    let took = start.elapsed();
    assert!(took < INSTANT, "{what}: refused only after {took:?}");
    let e = r.err().unwrap_or_else(|| panic!("{what} compiled"));
    assert_eq!((e.backend, e.kernel.as_str()), ("nvptx", k.name.as_str()));
    e.message
}

/// Defect: the `wgmma` layout was chosen without regard to registers; at 16 warps (128
/// registers per thread) a 64 x 256 accumulator in one warpgroup needs 128 registers by itself,
/// and `ptxas` failed with C7602 "Insufficient registers". Every warp count on every target
/// now assembles: `wgmma` where the accumulators fit, `mma.sync` (spread over every warp)
/// elsewhere.
#[test]
fn wgmma_respects_the_register_budget() {
    assert_eq!(register_budget(128), 255);
    assert_eq!(register_budget(512), 128);
    assert_eq!(register_budget(1024), 64);
    assert!(warpgroup_accumulators_fit(&[vec![64, 256]], 256));
    assert!(!warpgroup_accumulators_fit(&[vec![64, 256]], 512));
    assert!(!warpgroup_accumulators_fit(&[vec![128, 128]], 1024));
    // Two accumulators live at once (flash attention) count together.
    let attention = [vec![64, 64], vec![64, 128]];
    assert!(warpgroup_accumulators_fit(&attention, 128));
    let two_wide = [vec![64, 256], vec![64, 256]];
    assert!(!warpgroup_accumulators_fit(&two_wide, 128));

    let gemm256 = kernel("gemm", GEMM, &[("BN", 256), ("BK", 64)]);
    let cases = [
        ("wide", kernel("wide", WIDE, &[]), 1),
        ("gemm", kernel("gemm", GEMM, &[]), 3),
        ("gemm256", gemm256, 3),
    ];
    for (name, k, stages) in &cases {
        for arch in ARCHS {
            for warps in WARPS {
                let what = format!("{name} {} w{warps} s{stages}", arch.name());
                let opts = aligned(arch, warps, *stages);
                let p = match compile_timed(k, &opts, &what) {
                    Ok(p) => p,
                    // None is refused: the budget only picks `wgmma` or `mma.sync`.
                    Err(e) => panic!("{what}: {e}"),
                };
                let wgmma = p.ptx.contains("wgmma.mma_async");
                let expected = match (arch, *name, warps) {
                    (Arch::Sm90a, "wide", 4 | 8) => true,
                    (Arch::Sm90a, "gemm" | "gemm256", 8) => true,
                    // 64 accumulator registers of 128.
                    (Arch::Sm90a, "gemm", 16) => true,
                    _ => false,
                };
                assert_eq!(wgmma, expected, "{what}");
                assert_eq!(p.ptx.contains("mma.sync"), !wgmma, "{what}");
                assemble(k, &p, &opts, &format!("robust_{name}_w{warps}"));
            }
        }
    }
}

/// A `k`-loop over bounds of type `ty` whose tiles the pipeline copies ahead; `BM = 64` runs
/// as `wgmma` on sm_90a at 4 warps (with the accumulation left in flight from 3 stages).
fn pipelined(ty: &str) -> String {
    format!(
        "kernel piped<BM: i32 = 32>(a: *bf16, b: *bf16, c: *mut f32, lo: {ty}, n: {ty}) {{
    let rm = range(BM);
    let rn = range(32);
    let rk = range(16);
    let mut acc = zeros([BM, 32], f32);
    for k0 in lo..n step 16 {{
        let x = load(a + rm[:, None] * n + (k0 + rk)[None, :]);
        let y = load(b + (k0 + rk)[:, None] * 32 + rn[None, :]);
        acc = dot(x, y, acc);
    }}
    store(c + rm[:, None] * 32 + rn[None, :], acc);
}}"
    )
}

/// Defect: the pipeline prologue multiplied an `i64` step by an `i32` stage number, which
/// LLVM rejected (`icmp slt i32 0, i64 %3`). The pipeline's index arithmetic now uses the
/// induction variable's type.
#[test]
fn pipelined_loops_with_i64_bounds_assemble() {
    for ty in ["i32", "i64"] {
        for bm in [32, 64] {
            let k = kernel("piped", &pipelined(ty), &[("BM", bm)]);
            for arch in [Arch::Sm90, Arch::Sm90a] {
                for stages in 1..=4 {
                    let what = format!("{ty} BM={bm} {} s{stages}", arch.name());
                    let opts = aligned(arch, 4, stages);
                    emit_llvm(&k, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let p = compile_ptx(&k, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(p.ptx.contains("cp.async"), stages > 1, "{what}");
                    let wgmma = arch == Arch::Sm90a && bm == 64;
                    assert_eq!(p.ptx.contains("wgmma.mma_async"), wgmma, "{what}");
                    let name = format!("robust_piped_{ty}_{bm}_s{stages}");
                    assemble(&k, &p, &opts, &name);
                }
            }
        }
    }
}

/// A copy of `n` f32 through one tile, masked or not.
fn copy(n: u32, masked: bool) -> String {
    let mask = if masked { ", mask: r < n" } else { "" };
    format!(
        "kernel copy(x: *f32, y: *mut f32, n: i32) {{
    let r = range({n});
    store(y + r, load(x + r{mask}){mask});
}}"
    )
}

/// `c = a @ b` for one `M x N` tile, `K` deep.
fn product(m: u32, n: u32, k: u32, d: &str) -> String {
    format!(
        "kernel product(a: *{d}, b: *{d}, c: *mut f32) {{
    let x = load(a + range({m})[:, None] * {k} + range({k})[None, :]);
    let y = load(b + range({k})[:, None] * {n} + range({n})[None, :]);
    store(c + range({m})[:, None] * {n} + range({n})[None, :], dot(x, y));
}}"
    )
}

/// Defect: every tile is unrolled into per-thread registers, so a legal `range(1048576)` at
/// 4 warps became 8192 values per thread of straight-line code (with a branch per element
/// where masked) and took LLVM minutes (2^16: 0.5 s, 2^18: 9.9 s, 2^20: ~200 s). Tiles past
/// [`MAX_TILE_REGS`] registers per thread are now refused at once; those at the limit
/// compile in seconds.
#[test]
fn huge_tiles_compile_fast_or_are_refused() {
    for masked in [false, true] {
        let k = kernel("copy", &copy(1 << 20, masked), &[]);
        for mask in [0, !0] {
            let opts = PtxOptions {
                divisible_by_16: mask,
                ..PtxOptions::new(Arch::Sm90, 4)
            };
            let what = format!("copy 2^20 masked={masked} aligned={}", mask != 0);
            let e = refused(&k, &opts, &what);
            assert!(
                e.contains("8192 registers per thread over 128 threads"),
                "{e}"
            );
            assert!(e.contains("use more warps or smaller tiles"), "{e}");
        }
        // At the limit: 1024 registers per thread.
        for (n, warps) in [(1 << 20, 32), (1 << 15, 1)] {
            let k = kernel("copy", &copy(n, masked), &[]);
            let opts = PtxOptions::new(Arch::Sm90, warps);
            let what = format!("copy {n} masked={masked} w{warps}");
            compile_timed(&k, &opts, &what).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    // A 128 x 256 accumulator at one warp is 1024 registers per thread: at the limit.
    for d in ["bf16", "f32"] {
        let k = kernel("product", &product(128, 256, 16, d), &[]);
        let opts = aligned(Arch::Sm90, 1, 1);
        let what = format!("{d} 128x256x16 w1");
        let p = compile_timed(&k, &opts, &what).unwrap_or_else(|e| panic!("{what}: {e}"));
        assemble(&k, &p, &opts, &format!("robust_product_{d}"));
    }
    // Twice that is refused, at any depth; with more warps it compiles.
    let k = kernel("product", &product(256, 256, 64, "bf16"), &[]);
    let e = refused(&k, &aligned(Arch::Sm90, 1, 1), "256x256 w1");
    assert!(e.contains(&format!("more than the {MAX_TILE_REGS}")), "{e}");
    let opts = aligned(Arch::Sm90, 2, 1);
    compile_timed(&k, &opts, "256x256 w2").unwrap();
}

/// A loop whose pipelined tile (`y`, 128 x 256 bf16) is 64 KiB per stage; `x` is loaded
/// once, before it.
const RING: &str = "
kernel ring(a: *bf16, b: *bf16, c: *mut f32, k: i32) {
    let rm = range(16);
    let rn = range(256);
    let rk = range(128);
    let x = load(a + rm[:, None] * 128 + rk[None, :]);
    let mut acc = zeros([16, 256], f32);
    for k0 in 0..k step 128 {
        let y = load(b + (k0 + rk)[:, None] * 256 + rn[None, :]);
        acc = dot(x, y, acc);
    }
    store(c + rm[:, None] * 256 + rn[None, :], acc);
}
";

/// Defect: `num_stages` was unbounded: 65536 stages unrolled 65535 copies of the loop's tiles
/// (45 s) before the shared-memory check, and the ring's size was a `u32` product that wraps
/// (65536 stages of 64 KiB made 0 bytes). Stages are now at most [`MAX_STAGES`], and the ring
/// is checked in `u64` against the target's shared memory before any copy is unrolled.
#[test]
fn unbounded_stages_are_refused_fast() {
    let k = kernel("ring", RING, &[]);
    // 65536 and 65537 stages of 64 KiB wrap a u32 to 0 and to 64 KiB.
    for stages in [MAX_STAGES + 1, 100, 65536, 65537, u32::MAX] {
        let e = refused(&k, &aligned(Arch::Sm90, 4, stages), &format!("s{stages}"));
        let expected = format!("num_stages must be at most {MAX_STAGES}, not {stages}");
        assert!(e.contains(&expected), "{e}");
    }
    // Within the bound, a ring larger than shared memory is refused before it is unrolled.
    for (arch, stages) in [(Arch::Sm90, 4), (Arch::Sm90, MAX_STAGES), (Arch::Sm80, 3)] {
        let what = format!("{} s{stages}", arch.name());
        let e = refused(&k, &aligned(arch, 4, stages), &what);
        let ring = stages * 65536;
        let expected =
            format!("the loop pipeline needs {ring} bytes of shared memory ({stages} stages");
        assert!(e.contains(&expected), "{what}: {e}");
        assert!(
            e.contains("use fewer stages or smaller tiles"),
            "{what}: {e}"
        );
    }
    // Three stages (192 KiB and the 4 KiB `x`) fit on sm_90.
    let opts = aligned(Arch::Sm90, 4, 3);
    let p = compile_timed(&k, &opts, "sm_90 s3").unwrap();
    assert!(p.shared_bytes > 3 * 65536 && p.shared_bytes <= Arch::Sm90.max_shared_bytes());
    assemble(&k, &p, &opts, "robust_ring_s3");
    // The most stages compile where the ring fits.
    let k = kernel("piped", &pipelined("i32"), &[]);
    let opts = aligned(Arch::Sm90, 4, MAX_STAGES);
    let p = compile_timed(&k, &opts, "piped s8").unwrap();
    assert!(p
        .ptx
        .contains(&format!("cp.async.wait_group {};", MAX_STAGES - 2)));
    assemble(&k, &p, &opts, "robust_piped_s8");
}

/// Column sums and argmaxes of an `R x 2` tile: the axis spans the warps, so each thread
/// folds its (replicated) outputs' columns from shared memory.
fn columns(rows: u32) -> String {
    format!(
        "kernel columns(p: *f32, q: *mut f32, r: *mut i32) {{
    let x = load(p + range({rows})[:, None] * 2 + range(2)[None, :]);
    store(q + range(2), sum(x, axis: 0));
    store(r + range(2), argmax(x, axis: 0));
}}"
    )
}

/// Defect (found by the valid-program fuzzer): a reduction along an axis that spans warps was
/// unrolled along the whole axis for every output register, so `sum(x, axis: 0)` of a
/// 16384 x 2 tile (128 elements per thread) became 16384 shared-memory reads per thread and
/// took 150 s. The fold is now a loop over the axis.
#[test]
fn long_axis_reductions_compile_fast() {
    for (rows, warps) in [(16384, 4), (4096, 1), (16384, 32)] {
        let k = kernel("columns", &columns(rows), &[]);
        let opts = PtxOptions::new(Arch::Sm90, warps);
        let what = format!("columns {rows} w{warps}");
        let p = compile_timed(&k, &opts, &what).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            p.ptx.lines().count() < 5000,
            "{what}: {} lines",
            p.ptx.lines().count()
        );
        assemble(&k, &p, &opts, &format!("robust_columns_{rows}_w{warps}"));
    }
    // Too large to stage in shared memory: refused, at once.
    let k = kernel("columns", &columns(65536), &[]);
    let e = refused(&k, &PtxOptions::new(Arch::Sm90, 4), "columns 65536");
    assert!(e.contains("bytes of shared memory"), "{e}");
}
