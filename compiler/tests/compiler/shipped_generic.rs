//! The shipped activation kernels are generic over their element type (`T: type = bf16`): their
//! f32 and f16 specialisations check too; f32 IR is snapshotted next to the default (bf16) one of
//! `kernels.rs`, the GPU specialisations assemble, and their PTX is checked line by line for
//! what sets it apart from the bf16 PTX snapshotted in `nvptx_snapshots.rs`.

use kiln_compiler::{compile_to_ir, ir, ConstValue, DType, Defines, Source};

/// Every shipped file with a generic kernel, as a source.
fn generic_files() -> Vec<Source> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
    let mut files: Vec<Source> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kiln"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            Source::new(p.file_name().unwrap().to_string_lossy(), text)
        })
        .filter(|s| s.text.contains("<T: type = bf16"))
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

fn specialised(src: &Source, d: DType) -> Vec<ir::Kernel> {
    let defines = Defines::from([("T".to_string(), ConstValue::DType(d))]);
    compile_to_ir(src, &defines).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_activation_kernels_are_generic() {
    let names: Vec<String> = generic_files().into_iter().map(|s| s.name).collect();
    let want = [
        "adamw.kiln",
        "add.kiln",
        "attention.kiln",
        "cross_entropy.kiln",
        "dropout.kiln",
        "embedding.kiln",
        "rmsnorm.kiln",
        "rope.kiln",
        "swiglu.kiln",
    ];
    assert_eq!(names, want);
}

#[test]
fn shipped_kernels_ir_f32() {
    for src in generic_files() {
        for d in [DType::F32, DType::F16] {
            let kernels = specialised(&src, d);
            for k in &kernels {
                ir::verify(k).unwrap();
                // A kernel either takes T (and is specialised) or has no activations at all.
                if let Some((_, v)) = k.consts.iter().find(|(n, _)| n == "T") {
                    assert_eq!(*v, ConstValue::DType(d));
                    let text = ir::print_kernel(k);
                    assert!(
                        !text.contains("bf16"),
                        "{} in {d} still uses bf16:\n{text}",
                        k.name
                    );
                }
            }
            if d == DType::F32 {
                let text: Vec<String> = kernels.iter().map(ir::print_kernel).collect();
                insta::assert_snapshot!(format!("ir_f32_{}", src.name), text.join("\n"));
            }
        }
    }
}

#[cfg(feature = "nvptx")]
#[test]
fn gpu_specialisations_assemble_and_keep_to_their_type() {
    use kiln_compiler::backend::nvptx::{compile_ptx, Arch, PtxOptions};
    let ptxas = crate::nvptx_ptxas::require();
    for src in generic_files() {
        for d in [DType::F16, DType::F32] {
            for k in specialised(&src, d) {
                let generic = k.consts.iter().any(|(n, _)| n == "T");
                // Unaligned sm_90, and aligned (vector accesses) sm_80 and sm_90a (wgmma, with
                // attention's two-stage pipeline), as the ops launch them.
                for (arch, divisible_by_16, num_stages) in [
                    (Arch::Sm90, 0, 1),
                    (Arch::Sm80, u64::MAX, 1),
                    (Arch::Sm90a, u64::MAX, 2),
                ] {
                    let opts = PtxOptions {
                        divisible_by_16,
                        num_stages,
                        ..PtxOptions::new(arch, 4)
                    };
                    let p = compile_ptx(&k, &opts)
                        .unwrap_or_else(|e| panic!("{} in {d} for {}: {e}", k.name, arch.name()));
                    if let Some(ptxas) = &ptxas {
                        crate::nvptx_ptxas::assemble(ptxas, &p.ptx, arch.name(), &k.name);
                    }
                    if generic {
                        keeps_to(d, &k.name, &p.ptx);
                    }
                }
            }
        }
    }
}

/// The check lines of a kernel specialised to `d`: no bf16 anywhere; in f32, no 16-bit memory
/// accesses or conversions and no tensor-core instructions (f32 dots are FMA loops).
#[cfg(feature = "nvptx")]
fn keeps_to(d: DType, name: &str, ptx: &str) {
    let forbidden: &[&str] = match d {
        DType::F32 => &[
            "bf16",
            ".f16",
            "ld.global.b16",
            "st.global.b16",
            "mma",
            "ldmatrix",
            "cp.async",
        ],
        _ => &["bf16"],
    };
    for f in forbidden {
        if let Some(line) = ptx.lines().find(|l| l.contains(f)) {
            panic!("{name} in {d}: `{f}` in the PTX: {line}");
        }
    }
    assert_eq!(ptx.matches(".entry").count(), 1, "{name} in {d}");
}

/// f32 attention on the GPU (FMA dots, f32 tiles in shared memory) at the head dimensions and
/// tilings the ops launch, as ops/src/attention.rs picks them: (kernel, BM, BN, warps).
#[cfg(feature = "nvptx")]
#[test]
fn f32_attention_fits_the_gpu_at_every_head_dim() {
    use kiln_compiler::backend::nvptx::{compile_ptx, Arch, PtxOptions};
    let ptxas = crate::nvptx_ptxas::require();
    let src = generic_files()
        .into_iter()
        .find(|s| s.name == "attention.kiln")
        .unwrap();
    for d in [16i64, 64, 128, 256] {
        let wide = d > 64;
        for (kernel, bm, bn, warps) in [
            ("attn_fwd", 64, 64, 4),
            ("attn_bwd_dq", 64, 64, if wide { 8 } else { 4 }),
            (
                "attn_bwd_dkdv",
                if wide { 32 } else { 64 },
                64,
                if wide { 8 } else { 4 },
            ),
        ] {
            let defines = Defines::from([
                ("T".to_string(), ConstValue::DType(DType::F32)),
                ("BM".to_string(), ConstValue::Int(bm)),
                ("BN".to_string(), ConstValue::Int(bn)),
                ("D".to_string(), ConstValue::Int(d)),
            ]);
            let ks = compile_to_ir(&src, &defines).unwrap_or_else(|e| panic!("{e}"));
            let k = ks.iter().find(|k| k.name == kernel).unwrap();
            let opts = PtxOptions {
                divisible_by_16: u64::MAX,
                num_stages: 2,
                ..PtxOptions::new(Arch::Sm90a, warps)
            };
            let p = compile_ptx(k, &opts).unwrap_or_else(|e| panic!("{kernel} D={d}: {e}"));
            if let Some(ptxas) = &ptxas {
                crate::nvptx_ptxas::assemble(ptxas, &p.ptx, "sm_90a", kernel);
            }
        }
    }
}
