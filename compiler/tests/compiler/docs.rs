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
