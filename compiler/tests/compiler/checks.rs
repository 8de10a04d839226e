//! File tests with inline check lines: each `checks/*.kiln` is a kernel followed (or preceded)
//! by comment lines that say what to compile it to and what the output must contain, so that a
//! change in one backend decision (a vector width, `wgmma`, `cp.async`) shows as one failing
//! line, not as a large PTX snapshot diff.
//!
//! The directives, one a comment line:
//!
//! - `// EMIT: layouts` or `// EMIT: ptx` (required): `kiln compile --emit layouts|ptx`.
//! - `// ARGS: ...`: `--arch sm_80|sm_90|sm_90a`, `--num-warps N`, `--num-stages S`,
//!   `--aligned [INT_PARAMS]`, `-D NAME=VALUE` and `--kernel NAME`, as on the command line
//!   (defaults: sm_90, 4 warps, 1 stage, unaligned, every kernel of the file).
//! - `// CHECK: TEXT`: a line at or after the previous match contains TEXT.
//! - `// CHECK-NEXT: TEXT`: the line right after the previous match contains TEXT.
//! - `// CHECK-SAME: TEXT`: the line of the previous match contains TEXT too.
//! - `// CHECK-NOT: TEXT`: no line between the previous match and the next one contains TEXT
//!   (to the end of the output when no match follows).
//! - `// CHECK-COUNT: N TEXT`: exactly N lines of the whole output contain TEXT.
//!
//! PTX output is also assembled with `ptxas` where there is one.

use kiln_compiler::{compile_to_ir, ir, parse_define_value, Defines, Source};

/// One check of a file.
#[derive(Debug)]
enum Check {
    Line(String),
    Next(String),
    Same(String),
    Not(String),
    Count(usize, String),
}

/// A check file: what to compile and what to look for.
struct CheckFile {
    name: String,
    source: String,
    emit: String,
    args: Vec<String>,
    checks: Vec<(usize, Check)>,
}

fn parse(name: &str, source: &str) -> CheckFile {
    let mut file = CheckFile {
        name: name.into(),
        source: source.into(),
        emit: String::new(),
        args: vec![],
        checks: vec![],
    };
    for (i, line) in source.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix("//") else {
            continue;
        };
        let Some((directive, text)) = rest.trim().split_once(':') else {
            continue;
        };
        let text = text.trim().to_string();
        let check = match directive {
            "EMIT" => {
                file.emit = text;
                continue;
            }
            "ARGS" => {
                file.args.extend(text.split_whitespace().map(String::from));
                continue;
            }
            "CHECK" => Check::Line(text),
            "CHECK-NEXT" => Check::Next(text),
            "CHECK-SAME" => Check::Same(text),
            "CHECK-NOT" => Check::Not(text),
            "CHECK-COUNT" => {
                let (n, t) = text.split_once(' ').expect("CHECK-COUNT: N TEXT");
                Check::Count(n.parse().expect("a count"), t.trim().to_string())
            }
            _ => continue,
        };
        file.checks.push((i + 1, check));
    }
    assert!(
        ["layouts", "ptx"].contains(&file.emit.as_str()),
        "{name}: `// EMIT: layouts` or `// EMIT: ptx` is required"
    );
    assert!(!file.checks.is_empty(), "{name}: no CHECK lines");
    file
}

/// The options of `// ARGS:`.
struct Options {
    arch: String,
    num_warps: u32,
    num_stages: u32,
    aligned: Option<Vec<String>>,
    defines: Defines,
    kernel: Option<String>,
}

fn options(f: &CheckFile) -> Options {
    let mut o = Options {
        arch: "sm_90".into(),
        num_warps: 4,
        num_stages: 1,
        aligned: None,
        defines: Defines::new(),
        kernel: None,
    };
    let mut args = f.args.iter().peekable();
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{}: {a} needs a value", f.name))
        };
        match a.as_str() {
            "--arch" => o.arch = value().clone(),
            "--num-warps" => o.num_warps = value().parse().unwrap(),
            "--num-stages" => o.num_stages = value().parse().unwrap(),
            "--kernel" => o.kernel = Some(value().clone()),
            "-D" => {
                let (n, v) = value().split_once('=').expect("-D NAME=VALUE");
                let v = parse_define_value(v).unwrap_or_else(|| panic!("{}: -D {n}", f.name));
                o.defines.insert(n.into(), v);
            }
            "--aligned" => {
                let ints = match args.peek() {
                    Some(next) if !next.starts_with('-') => {
                        args.next().unwrap().split(',').map(String::from).collect()
                    }
                    _ => vec![],
                };
                o.aligned = Some(ints);
            }
            _ => panic!("{}: unknown argument `{a}`", f.name),
        }
    }
    o
}

/// What `kiln compile` prints for the file.
#[cfg(feature = "nvptx")]
fn output(f: &CheckFile) -> String {
    use kiln_compiler::backend::nvptx::{compile_ptx_module, Arch, PtxOptions};
    let o = options(f);
    let kernels = kernels(f, &o);
    let arch = Arch::from_name(&o.arch).unwrap_or_else(|| panic!("{}: {}", f.name, o.arch));
    let opts = |k: &ir::Kernel| PtxOptions {
        divisible_by_16: aligned_mask(k, o.aligned.as_deref()),
        num_stages: o.num_stages,
        ..PtxOptions::new(arch, o.num_warps)
    };
    match f.emit.as_str() {
        "layouts" => kernels
            .iter()
            .map(|k| kiln_compiler::backend::print_layouts_gpu(k, &opts(k)))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => {
            let with: Vec<_> = kernels.iter().map(|k| (k, opts(k))).collect();
            compile_ptx_module(&with).unwrap_or_else(|e| panic!("{}: {e}", f.name))
        }
    }
}

#[cfg(feature = "nvptx")]
fn aligned_mask(k: &ir::Kernel, ints: Option<&[String]>) -> u64 {
    let Some(ints) = ints else { return 0 };
    k.params
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.kind, ir::ParamKind::Ptr { .. }) || ints.contains(&p.name))
        .fold(0, |m, (i, _)| m | 1 << i)
}

fn kernels(f: &CheckFile, o: &Options) -> Vec<ir::Kernel> {
    let src = Source::new(f.name.clone(), f.source.clone());
    let mut ks = compile_to_ir(&src, &o.defines).unwrap_or_else(|e| panic!("{e}"));
    if let Some(name) = &o.kernel {
        ks.retain(|k| k.name == *name);
        assert!(!ks.is_empty(), "{}: no kernel `{name}`", f.name);
    }
    ks
}

/// Runs the checks of `f` over `out`; the first one that fails, as a message.
fn run_checks(f: &CheckFile, out: &str) -> Result<(), String> {
    let lines: Vec<&str> = out.lines().collect();
    // The next line a match may be on, and where the pending CHECK-NOTs start.
    let mut at = 0;
    let mut nots: Vec<(usize, &str)> = vec![];
    let fail = |line: usize, what: String| Err(format!("{}:{line}: {what}", f.name));
    let check_nots = |nots: &mut Vec<(usize, &str)>, range: &[&str]| -> Result<(), String> {
        for (line, text) in nots.drain(..) {
            if let Some(hit) = range.iter().find(|l| l.contains(text)) {
                return fail(line, format!("CHECK-NOT `{text}` found: {hit}"));
            }
        }
        Ok(())
    };
    for (line, check) in &f.checks {
        match check {
            Check::Not(text) => nots.push((*line, text)),
            Check::Count(n, text) => {
                let found = lines.iter().filter(|l| l.contains(text.as_str())).count();
                if found != *n {
                    return fail(*line, format!("`{text}` on {found} lines, not {n}"));
                }
            }
            Check::Line(text) => {
                let Some(i) = (at..lines.len()).find(|&i| lines[i].contains(text.as_str())) else {
                    return fail(*line, format!("CHECK `{text}` not found after line {at}"));
                };
                check_nots(&mut nots, &lines[at..i])?;
                at = i + 1;
            }
            Check::Same(text) => {
                let previous = at.checked_sub(1).and_then(|i| lines.get(i));
                if !previous.is_some_and(|l| l.contains(text.as_str())) {
                    let got = previous.copied().unwrap_or("no match before");
                    return fail(*line, format!("CHECK-SAME `{text}`, on: {got}"));
                }
            }
            Check::Next(text) => {
                if !lines.get(at).is_some_and(|l| l.contains(text.as_str())) {
                    let got = lines.get(at).copied().unwrap_or("the end of the output");
                    return fail(*line, format!("CHECK-NEXT `{text}`, found: {got}"));
                }
                check_nots(&mut nots, &[])?;
                at += 1;
            }
        }
    }
    check_nots(&mut nots, &lines[at.min(lines.len())..])
}

#[cfg(feature = "nvptx")]
#[test]
fn check_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compiler/checks");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kiln"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty());
    let ptxas = crate::nvptx_ptxas::require();
    let mut failures = vec![];
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let f = parse(&name, &std::fs::read_to_string(p).unwrap());
        let out = output(&f);
        if let (Some(ptxas), "ptx") = (&ptxas, f.emit.as_str()) {
            crate::nvptx_ptxas::assemble(ptxas, &out, &options(&f).arch, &name);
        }
        if let Err(e) = run_checks(&f, &out) {
            failures.push(format!("{e}\n--- output of {name} ---\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The runner fails where it should: a check that does not hold is reported with its line.
#[test]
fn a_failing_check_names_its_line() {
    let src = "// EMIT: layouts\n// CHECK: b\n// CHECK-NOT: x\n// CHECK: c\n// CHECK-NEXT: d\n\
               // CHECK-SAME: e\n";
    let f = parse("t.kiln", src);
    assert_eq!(run_checks(&f, "a\nb\nc\nde"), Ok(()));
    let e = run_checks(&f, "b\nc\nd").unwrap_err();
    assert!(e.starts_with("t.kiln:6: CHECK-SAME `e`"), "{e}");
    let e = run_checks(&f, "b\nx\nc\nde").unwrap_err();
    assert!(e.starts_with("t.kiln:3: CHECK-NOT `x` found"), "{e}");
    let e = run_checks(&f, "b\nc\ne\nd").unwrap_err();
    assert!(e.starts_with("t.kiln:5: CHECK-NEXT `d`"), "{e}");
    let e = run_checks(&f, "c\nb").unwrap_err();
    assert!(e.starts_with("t.kiln:4: CHECK `c` not found"), "{e}");
    let counted = parse("t.kiln", "// EMIT: ptx\n// CHECK-COUNT: 2 ld\n");
    assert_eq!(run_checks(&counted, "ld\nst\nld"), Ok(()));
    assert!(run_checks(&counted, "ld").is_err());
}
