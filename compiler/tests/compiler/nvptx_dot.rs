//! `dot` on tensor cores: every supported tile shape and operand orientation compiles to
//! `ldmatrix` + `mma.sync.m16n8k16` that `ptxas` accepts for sm_80 and sm_90 without spills,
//! other dtypes fall back to the FMA loop, and the shipped GEMM fits in registers at the
//! configurations the benchmark sweeps.

use crate::nvptx_ptxas;
use kiln_compiler::backend::nvptx::{compile_ptx, Arch, PtxKernel, PtxOptions};
use kiln_compiler::{compile_to_ir, ConstValue, Defines, Source};

const DOT: &str = include_str!("nvptx_kernels/dot.kiln");
/// The shipped GEMM (`ops/kernels/gemm.kiln`).
pub const GEMM: &str = include_str!("../../../ops/kernels/gemm.kiln");
const MMA_BF16: &str = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";

include!("nvptx_kernels/dot_shapes.rs");

fn compile(
    src: &str,
    name: &str,
    defines: &[(&str, ConstValue)],
    arch: Arch,
    num_warps: u32,
    num_stages: u32,
) -> PtxKernel {
    let defines: Defines = defines.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let k = compile_to_ir(&Source::new(format!("{name}.kiln"), src), &defines)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|k| k.name == name)
        .unwrap();
    let opts = PtxOptions {
        arch,
        num_warps,
        divisible_by_16: u64::MAX,
        num_stages,
        bounds_checks: false,
    };
    compile_ptx(&k, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn int(v: i64) -> ConstValue {
    ConstValue::Int(v)
}

#[test]
fn every_tile_shape_and_orientation_uses_tensor_cores() {
    let ptxas = nvptx_ptxas::require();
    for &(m, n, k) in DOT_SHAPES {
        let (m, n, k) = (m as i64, n as i64, k as i64);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let defines = [
                ("M", int(m)),
                ("N", int(n)),
                ("K", int(k)),
                ("TA", ConstValue::Bool(ta)),
                ("TB", ConstValue::Bool(tb)),
            ];
            for (arch, warps) in [(Arch::Sm80, 4), (Arch::Sm90, 4), (Arch::Sm90, 8)] {
                let what = format!("{m}x{n}x{k} ta={ta} tb={tb} {} w{warps}", arch.name());
                let p = compile(DOT, "dot_tile", &defines, arch, warps, 1);
                assert!(p.ptx.contains(MMA_BF16), "{what}");
                assert!(!p.ptx.contains(".extern .func"), "{what}");
                // `a` is read plainly unless transposed; `b` transposed unless it was given so.
                let plain = p.ptx.contains("ldmatrix.sync.aligned.m8n8.x4.shared.b16")
                    || p.ptx.contains("ldmatrix.sync.aligned.m8n8.x2.shared.b16");
                let trans = p.ptx.contains(".trans.shared.b16");
                assert_eq!(plain, !ta || tb, "{what}");
                assert_eq!(trans, ta || !tb, "{what}");
                if let Some(ptxas) = &ptxas {
                    let name = format!("dot_{m}x{n}x{k}_{ta}_{tb}_w{warps}");
                    let s = nvptx_ptxas::assemble(ptxas, &p.ptx, arch.name(), &name);
                    assert_eq!((s.spill_store_bytes, s.spill_load_bytes), (0, 0), "{what}");
                }
            }
        }
    }
}

#[test]
fn other_dtypes_and_loops() {
    let ptxas = nvptx_ptxas::require();
    let f16 = compile(DOT, "dot_f16", &[], Arch::Sm80, 4, 1);
    assert!(f16
        .ptx
        .contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"));
    let f32 = compile(DOT, "dot_f32", &[], Arch::Sm80, 4, 1);
    assert!(!f32.ptx.contains("mma.sync"), "f32 runs as an FMA loop");
    assert!(f32.ptx.contains("fma.rn.f32"));
    let looped = compile(DOT, "dot_loop", &[], Arch::Sm90, 4, 1);
    assert!(looped.ptx.contains(MMA_BF16));
    if let Some(ptxas) = &ptxas {
        for (p, name) in [(&f16, "dot_f16"), (&f32, "dot_f32"), (&looped, "dot_loop")] {
            let arch = if name == "dot_loop" { "sm_90" } else { "sm_80" };
            nvptx_ptxas::assemble(ptxas, &p.ptx, arch, name);
        }
    }
}

/// The `(BM, BN, BK, warps, stages)` configurations `kiln bench gemm` sweeps
/// (`src/bench/gemm.rs`), the first the default.
pub const GEMM_CONFIGS: &[(i64, i64, i64, u32, u32)] = &[
    (128, 128, 32, 4, 1),
    (128, 128, 32, 4, 4),
    (128, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 128, 32, 8, 4),
    (128, 256, 64, 8, 4),
    (128, 256, 32, 8, 4),
    (128, 256, 32, 8, 6),
    (128, 128, 64, 8, 5),
    (128, 128, 64, 8, 6),
    (64, 256, 64, 4, 4),
    (64, 128, 64, 4, 4),
];

#[test]
fn gemm_fits_in_registers() {
    let Some(ptxas) = nvptx_ptxas::require() else {
        return;
    };
    let mut report = vec![];
    for (i, &(bm, bn, bk, warps, stages)) in GEMM_CONFIGS.iter().enumerate() {
        let defines = [("BM", int(bm)), ("BN", int(bn)), ("BK", int(bk))];
        // The H200 runs sm_90a (`wgmma` where the tile fills warpgroups); sm_90 keeps
        // `mma.sync` everywhere; sm_80 (less shared memory) is checked at the default.
        let archs: &[Arch] = match i {
            0 => &[Arch::Sm80, Arch::Sm90, Arch::Sm90a],
            _ => &[Arch::Sm90, Arch::Sm90a],
        };
        for &arch in archs {
            let p = compile(GEMM, "gemm", &defines, arch, warps, stages);
            let wgmma = arch.has_wgmma() && bm == 16 * warps as i64;
            assert_eq!(p.ptx.contains("wgmma.mma_async"), wgmma);
            assert_eq!(p.ptx.contains(MMA_BF16), !wgmma);
            assert_eq!(p.ptx.contains("ldmatrix"), !wgmma);
            assert!(!p.ptx.contains(".extern .func"));
            let name = format!("gemm_{bm}x{bn}x{bk}_w{warps}_s{stages}");
            let s = nvptx_ptxas::assemble(&ptxas, &p.ptx, arch.name(), &name);
            report.push(format!(
                "gemm {bm}x{bn}x{bk} w{warps} s{stages} {}: {} registers, spills {}/{}, smem {}",
                arch.name(),
                s.registers,
                s.spill_store_bytes,
                s.spill_load_bytes,
                p.shared_bytes
            ));
            assert_eq!(
                (s.spill_store_bytes, s.spill_load_bytes),
                (0, 0),
                "{}",
                report.last().unwrap()
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}
