//! Every shipped kernel parses and checks with its defaults; its AST and its IR after each pass
//! are snapshotted.

use kiln_compiler::{compile_to_ir, ir, parse, passes, syntax, Defines, Source};

fn source(path: &std::path::Path) -> Source {
    let text = std::fs::read_to_string(path).unwrap();
    Source::new(path.file_name().unwrap().to_string_lossy(), text)
}

#[test]
fn shipped_kernels_ast() {
    insta::glob!("../../../ops/kernels", "*.kiln", |path| {
        let src = source(path);
        let module = parse(&src).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(syntax::print_module(&module));
    });
}

/// The IR of every shipped kernel after the checker and after each pass (`kiln compile
/// --print-after-all`): its last section is the IR the backends get (`--emit ir`).
#[test]
fn shipped_kernels_print_after_all() {
    insta::glob!("../../../ops/kernels", "*.kiln", |path| {
        let src = source(path);
        let checked = kiln_compiler::check(&src, &Defines::new()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!checked.is_empty(), "{} has no kernel", src.name);
        let text: Vec<String> = checked.iter().map(passes::print_after_all).collect();
        let compiled = compile_to_ir(&src, &Defines::new()).unwrap();
        for (k, listing) in compiled.iter().zip(&text) {
            ir::verify(k).unwrap();
            assert!(listing.contains(&ir::print_kernel(k)), "{}", k.name);
        }
        insta::assert_snapshot!(text.join("\n"));
    });
}

/// Realistic specialisations (the Qwen2.5-0.5B and 7B-like shapes) check too.
#[test]
fn shipped_kernels_specialise() {
    let cases: &[(&str, &[(&str, i64)])] = &[
        ("rmsnorm.kiln", &[("BLOCK", 1024)]),
        ("rmsnorm.kiln", &[("BLOCK", 4096)]),
        ("swiglu.kiln", &[("BLOCK", 2048)]),
        ("rope.kiln", &[("QHEADS", 32), ("KHEADS", 8), ("HALF", 64)]),
        ("cross_entropy.kiln", &[("BLOCK", 8192)]),
        ("adamw.kiln", &[("BLOCK", 4096)]),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
    for (file, defs) in cases {
        let src = source(&dir.join(file));
        let defines: Defines = defs
            .iter()
            .map(|(n, v)| (n.to_string(), kiln_compiler::ConstValue::Int(*v)))
            .collect();
        let kernels = compile_to_ir(&src, &defines).unwrap_or_else(|e| panic!("{e}"));
        for k in &kernels {
            ir::verify(k).unwrap();
        }
    }
}

/// The whole kernel set parses and checks well inside the 10 ms budget (release builds; debug
/// builds are far slower, so the bound here is loose and the figure is printed).
#[test]
fn check_time_of_kernel_set() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
    let sources: Vec<Source> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
        .map(|p| source(&p))
        .collect();
    let start = std::time::Instant::now();
    let runs = 20;
    for _ in 0..runs {
        for s in &sources {
            kiln_compiler::check(s, &Defines::new()).unwrap();
        }
    }
    let per_set = start.elapsed() / runs;
    println!(
        "parse + check of {} kernel files: {per_set:?}",
        sources.len()
    );
    assert!(per_set.as_millis() < 200, "{per_set:?}");
}

/// The IR text form reads back: print, parse, print gives the same text, for every kernel.
#[test]
fn ir_text_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "kiln") {
            continue;
        }
        let src = source(&path);
        for raw in [true, false] {
            let kernels = if raw {
                kiln_compiler::check(&src, &Defines::new())
            } else {
                compile_to_ir(&src, &Defines::new())
            }
            .unwrap_or_else(|e| panic!("{e}"));
            for k in &kernels {
                let text = ir::print_kernel(k);
                let parsed = ir::parse_kernel(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                ir::verify(&parsed).unwrap();
                assert_eq!(ir::print_kernel(&parsed), text);
            }
        }
    }
}
