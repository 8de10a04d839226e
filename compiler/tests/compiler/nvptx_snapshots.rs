//! The PTX of every shipped kernel for sm_90 (4 warps, no alignment specialisation), snapshotted
//! so any change in code generation shows up in review.

use kiln_compiler::backend::nvptx::{compile_ptx, Arch, PtxOptions};
use kiln_compiler::{compile_to_ir, Defines, Source};

#[test]
fn shipped_kernels_ptx_sm90() {
    insta::glob!("../../../ops/kernels", "*.kiln", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let src = Source::new(path.file_name().unwrap().to_string_lossy(), text);
        let kernels = compile_to_ir(&src, &Defines::new()).unwrap_or_else(|e| panic!("{e}"));
        let ptx: Vec<String> = kernels
            .iter()
            .map(|k| compile_ptx(k, &PtxOptions::new(Arch::Sm90, 4)).unwrap().ptx)
            .collect();
        insta::assert_snapshot!(ptx.join("\n"));
    });
}
