//! The examples in the documentation compile: every ```kiln block of README.md and
//! docs/LANGUAGE.md that defines a kernel is checked (blocks that are fragments are parsed inside
//! a kernel wrapper).

use kiln_compiler::{check, Defines, Source};

fn kiln_blocks(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```kiln") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                out.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn documented_kernels_compile() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for doc in ["README.md", "docs/LANGUAGE.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, block) in kiln_blocks(&text).into_iter().enumerate() {
            if !block.contains("kernel ") {
                continue;
            }
            let src = Source::new(format!("{doc} block {i}"), block);
            if let Err(e) = check(&src, &Defines::new()) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} documented kernels found");
}

/// The builtins section of docs/LANGUAGE.md is the table the checker dispatches on, rendered
/// (`kiln_compiler::sema::builtin_table::reference`). `KILN_UPDATE_DOCS=1` rewrites it.
#[test]
fn the_builtins_reference_is_generated_from_the_table() {
    const START: &str = "this part) -->\n";
    const END: &str = "<!-- end of builtins -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/LANGUAGE.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(START).expect("the builtins start marker") + START.len();
    let end = text.find(END).expect("the builtins end marker");
    let want = kiln_compiler::sema::builtin_table::reference();
    if std::env::var("KILN_UPDATE_DOCS").as_deref() == Ok("1") {
        let updated = format!("{}{want}{}", &text[..start], &text[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        text[start..end] == want,
        "docs/LANGUAGE.md's builtins differ from the table; run \
         KILN_UPDATE_DOCS=1 cargo test -p kiln-compiler --test compiler docs\n--- generated ---\n{want}"
    );
}
