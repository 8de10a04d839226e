//! Finding and running `ptxas` (from the `nvidia-cuda-nvcc` wheel, `$KILN_PTXAS`, or `PATH`) to
//! prove generated PTX assembles, and to read its register and spill figures.

use std::path::PathBuf;
use std::process::Command;

/// What `ptxas -v` reports for one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtxasStats {
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_bytes: u32,
}

/// The `ptxas` binary, if one can be found.
pub fn find() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KILN_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let py =
        "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'ptxas'))";
    if let Ok(out) = Command::new("python3").args(["-c", py]).output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return Some(p);
        }
    }
    let out = Command::new("sh")
        .args(["-c", "command -v ptxas"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// `ptxas` for tests: None (after saying so) when it is missing, unless `KILN_REQUIRE_PTXAS=1`.
pub fn require() -> Option<PathBuf> {
    let found = find();
    if found.is_none() {
        if std::env::var("KILN_REQUIRE_PTXAS").as_deref() == Ok("1") {
            panic!("ptxas not found and KILN_REQUIRE_PTXAS=1");
        }
        eprintln!("skipped: ptxas not found");
    }
    found
}

/// Assembles `ptx` for `arch` (`sm_80`, `sm_90`); panics with ptxas's message if it fails.
pub fn assemble(ptxas: &PathBuf, ptx: &str, arch: &str, name: &str) -> PtxasStats {
    let dir = std::env::temp_dir().join(format!("kiln-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("{name}-{arch}.ptx"));
    std::fs::write(&input, ptx).unwrap();
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&input)
        .arg("-o")
        .arg(dir.join(format!("{name}-{arch}.cubin")))
        .output()
        .expect("ptxas runs");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ptxas -arch={arch} rejected {name}:\n{text}\n{ptx}"
    );
    parse_stats(&text).unwrap_or_else(|| panic!("no statistics in ptxas output:\n{text}"))
}

/// Reads `Used N registers` and `N bytes stack frame, N bytes spill stores, N bytes spill loads`.
pub fn parse_stats(text: &str) -> Option<PtxasStats> {
    let number_before = |key: &str| -> Option<u32> {
        let at = text.find(key)?;
        text[..at].split_whitespace().last()?.parse().ok()
    };
    let registers = {
        let at = text.find("Used ")? + 5;
        text[at..].split_whitespace().next()?.parse().ok()?
    };
    Some(PtxasStats {
        registers,
        spill_store_bytes: number_before(" bytes spill stores")?,
        spill_load_bytes: number_before(" bytes spill loads")?,
        stack_bytes: number_before(" bytes stack frame")?,
    })
}
