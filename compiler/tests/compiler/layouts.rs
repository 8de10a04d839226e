//! `kiln compile --emit layouts` on every shipped kernel, snapshotted: a change in a layout, a
//! vector width, a `dot` path or a loop pipeline shows up in review as the lines it changes.
//! (`--print-after-all` is snapshotted in `kernels`.)

use kiln_compiler::{compile_to_ir, Defines, Source};

fn source(path: &std::path::Path) -> Source {
    let text = std::fs::read_to_string(path).unwrap();
    Source::new(path.file_name().unwrap().to_string_lossy(), text)
}

/// The layouts on an H200 launch with everything asked for: sm_90a (`wgmma`), three pipeline
/// stages, every pointer 16-byte aligned (what the launcher specialises on for buffers from
/// the allocator), and the CPU backend's fusion and lanes.
#[test]
fn shipped_kernels_layouts() {
    insta::glob!("../../../ops/kernels", "*.kiln", |path| {
        let src = source(path);
        let kernels = compile_to_ir(&src, &Defines::new()).unwrap_or_else(|e| panic!("{e}"));
        let text: Vec<String> = kernels.iter().map(layouts).collect();
        insta::assert_snapshot!(text.join("\n"));
    });
}

#[cfg(feature = "nvptx")]
fn layouts(k: &kiln_compiler::ir::Kernel) -> String {
    use kiln_compiler::backend::nvptx::{Arch, PtxOptions};
    use kiln_compiler::ir::ParamKind;
    let pointers = k
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.kind, ParamKind::Ptr { .. }))
        .fold(0u64, |m, (i, _)| m | 1 << i);
    let opts = PtxOptions {
        divisible_by_16: pointers,
        num_stages: 3,
        ..PtxOptions::new(Arch::Sm90a, 4)
    };
    kiln_compiler::backend::print_layouts_gpu(k, &opts)
}

#[cfg(not(feature = "nvptx"))]
fn layouts(k: &kiln_compiler::ir::Kernel) -> String {
    kiln_compiler::backend::print_layouts(k)
}

/// The annotated text is still IR: it parses back to the kernel it annotates.
#[test]
fn layouts_text_parses_as_the_same_kernel() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
    let src = source(&dir.join("attention.kiln"));
    for k in compile_to_ir(&src, &Defines::new()).unwrap() {
        let text = layouts(&k);
        let parsed = kiln_compiler::ir::parse_kernel(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            kiln_compiler::ir::print_kernel(&parsed),
            kiln_compiler::ir::print_kernel(&k)
        );
    }
}
