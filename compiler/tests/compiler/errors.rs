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
