//! Text-in, text-out tests of each pass: `tests/ir/NAME.ir` starts with `; pass: NAME`; the IR
//! after that pass is snapshotted (and verified).

use kiln_compiler::{ir, passes};

#[test]
fn pass_file_tests() {
    insta::glob!("../ir", "*.ir", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let pass_name = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("; pass: "))
            .expect("first line names the pass")
            .trim();
        let (_, pass) = passes::PIPELINE
            .iter()
            .find(|(n, _)| *n == pass_name)
            .unwrap_or_else(|| panic!("no pass `{pass_name}`"));
        let mut k = ir::parse_kernel(&text).unwrap_or_else(|e| panic!("{e}"));
        ir::verify(&k).unwrap();
        pass(&mut k);
        ir::verify(&k).unwrap_or_else(|e| panic!("{e}\n{}", ir::print_kernel(&k)));
        insta::assert_snapshot!(ir::print_kernel(&k));
    });
}
