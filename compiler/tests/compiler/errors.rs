//! Every malformed program in `tests/errors/` fails with a located, rendered error; the rendered
//! text is snapshotted.

use kiln_compiler::{check, Defines, Source};

#[test]
fn malformed_programs() {
    insta::glob!("../errors", "*.kiln", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let rendered = match check(&Source::new(name.clone(), text), &Defines::new()) {
            Ok(_) => panic!("{name} should not compile"),
            Err(e) => e.to_string(),
        };
        assert!(rendered.starts_with(&format!("{name}:")), "{rendered}");
        assert!(rendered.contains('^'), "{rendered}");
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn an_error_returned_from_main_prints_its_diagnostic() {
    // `fn main() -> Result<(), CompileError>` prints the error with `{:?}`.
    let src = Source::new("t.kiln", "kernel k() { let x = ; }");
    let err = check(&src, &Defines::new()).unwrap_err();
    let debug = format!("{err:?}");
    assert_eq!(debug, err.to_string());
    assert!(debug.starts_with("t.kiln:1:22: error:"), "{debug}");
    assert!(debug.contains('^') && !debug.contains("\\n"), "{debug}");
}
