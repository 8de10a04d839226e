//! Random *valid* programs through both backends. Unlike `fuzz.rs` (which mutates text and only
//! asks the checker not to panic), a typed generator here builds programs that the language
//! accepts: pointer parameters of every memory type, scalar parameters, power-of-two 1-D and 2-D
//! tiles from `range` and broadcasts, masked and unmasked loads and stores, `atomic_add`, every
//! elementwise operator and cast with awkward constants (0, -1, `i32::MIN`, huge floats, NaN,
//! infinities), `where`, comparisons, reductions, shape changes, `for` loops carrying values
//! (`i32` and `i64` bounds), run-time `if`, helper functions and `dot` of `bf16`/`f16` tiles
//! (in and out of loops, GEMM style). Every program ends with an unconditional store, in
//! range, to a parameter nothing reads (so no compiler may delete it).
//!
//! Each program must:
//! 1. check (`compile_to_ir`): an error is a bug of this generator or of the checker;
//! 2. compile with Cranelift (bounds-checked, and sometimes unchecked) without a panic, and run
//!    two programs of its grid on small bounds-checked buffers;
//! 3. compile to PTX for a few random (`sm_80`/`sm_90`/`sm_90a`, warps, stages, alignment
//!    specialisation) configurations without a panic, or fail with a [`BackendError`] that says
//!    clearly why (`ACCEPTED_ERRORS`); the PTX must hold the kernel's entry, not be an empty
//!    `ret;` body, store to global memory, and assemble with `ptxas` for its target.
//!
//! Every compilation (and each `ptxas` run and CPU run) gets [`PER_COMPILATION_BUDGET`]; it
//! runs on its own thread, so a hang is reported instead of stopping the run. A failure prints
//! the seed, the program, the configuration and what went wrong; the long run also shrinks
//! the first program of each kind of failure by deleting statements.
//!
//! Reproducing: program `i` of a run uses seed `base + i` (`base` from `KILN_FUZZ_VALID_SEED`;
//! each failure prints its seed and configuration). The ignored `valid_program_from_file`
//! compiles one program for one configuration and says what happened and how long it took:
//! `KILN_FUZZ_VALID_FILE=seed:0x6b696c6e0007` (or a path to a `.kiln` file)
//! `KILN_FUZZ_VALID_TARGET='sm_90a w16 s2 aligned' cargo test -p kiln-compiler --test compiler
//! valid_program_from_file -- --ignored --nocapture`. If the process dies (an LLVM abort, a
//! crash), the program and configuration being compiled are in
//! `$TMPDIR/kiln-fuzz-valid-<pid>-<worker>.kiln`.
//!
//! `valid_programs_compile_through_both_backends` runs `CI_CASES` programs (`KILN_FUZZ_CASES`
//! overrides) and skips the configurations of [`KNOWN_DEFECTS`]; `valid_programs_long_run`
//! (ignored: `cargo test -- --ignored`) runs `KILN_FUZZ_VALID_CASES` (default 5000) for at most
//! `KILN_FUZZ_VALID_SECONDS`, skips nothing, and fails only on failures no known defect
//! explains. `KILN_FUZZ_VALID_THREADS` sets the workers (default: one per core).

use kiln_compiler::backend::cranelift::{compile_with, CpuKernel, CpuOptions};
use kiln_compiler::backend::BackendError;
use kiln_compiler::ir::{Kernel, ParamKind};
use kiln_compiler::{compile_to_ir, DType, Defines, Source};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

#[cfg(feature = "nvptx")]
use kiln_compiler::backend::nvptx::{compile_ptx, Arch, PtxOptions};

/// The time one compilation (Cranelift, one PTX configuration, one `ptxas` run) or one CPU run
/// may take, in a debug build.
const PER_COMPILATION_BUDGET: Duration = Duration::from_secs(20);
/// Programs of the CI test (`KILN_FUZZ_CASES` overrides).
const CI_CASES: usize = 400;
/// Programs of the long run (`KILN_FUZZ_VALID_CASES` overrides).
const LONG_CASES: usize = 5000;
/// The base seed of both tests (`KILN_FUZZ_VALID_SEED` overrides).
const BASE_SEED: u64 = 0x6b69_6c6e_0000;
/// Statements per program, at most (about: the final store and a dot block may pass it).
const MAX_STATEMENTS: usize = 30;
/// PTX configurations per program.
#[cfg(feature = "nvptx")]
const GPU_CONFIGS: usize = 3;
/// Time the long run may spend shrinking the first program of one kind of failure.
const SHRINK_BUDGET: Duration = Duration::from_secs(60);

// ---- known defects ------------------------------------------------------------------------

/// Defects being fixed separately. The CI test skips the configurations they match (so that
/// it passes until they are fixed: remove an entry once its fix lands); the long run compiles
/// them anyway and labels the failures they explain.
#[cfg(feature = "nvptx")]
struct KnownDefect {
    name: &'static str,
    matches: fn(&Features, &PtxOptions) -> bool,
}

#[cfg(feature = "nvptx")]
const KNOWN_DEFECTS: &[KnownDefect] = &[
    // Tiles far past what fits in registers take minutes to compile: maximum-size tiles, but
    // already (this fuzzer found) tiles of more than 64 elements per thread, e.g. a 64 x 128
    // `dot` on one warp, take 20 to 40 s between LLVM and ptxas.
    KnownDefect {
        name: "huge-tiles-slow",
        matches: |f, o| f.max_elems > 1 << 16 || elems_per_thread(f, o) > 64,
    },
    // Found by this fuzzer: `bounds_checks: true` makes the PTX up to 19 times longer (one
    // 64 x 64 f32 load and store on one warp: 414 lines unchecked, 7714 checked) and LLVM and
    // ptxas 5 to 10 times slower, so checked kernels with more than 32 elements of a tile per
    // thread pass the budget.
    KnownDefect {
        name: "bounds-checks-slow",
        matches: |f, o| o.bounds_checks && elems_per_thread(f, o) > 32,
    },
];

/// Backend errors that say clearly why the configuration cannot compile (anything else a
/// backend returns is a failure).
const ACCEPTED_ERRORS: &[&str] = &[
    // Tiles (or a loop pipeline) needing more shared memory than the target has (nvptx).
    "bytes of shared memory",
    // More pipeline stages than the backend supports, or a warp count it has no layout for
    // (nvptx).
    "num_stages must be at most",
    "num_warps must be a power of two",
    // A tile needing more registers per thread than one tile may have (nvptx).
    "registers per thread over",
    // The CPU backend's frame limit.
    "MiB of memory (the CPU backend's limit)",
];

// ---- random numbers -----------------------------------------------------------------------

/// SplitMix64.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

// ---- types and shapes ---------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum D {
    Bool,
    I32,
    I64,
    F16,
    Bf16,
    F32,
}

const ALL: [D; 6] = [D::Bool, D::I32, D::I64, D::F16, D::Bf16, D::F32];
const NUMERIC: [D; 5] = [D::I32, D::I64, D::F16, D::Bf16, D::F32];
const MEMORY: [D; 5] = [D::F32, D::Bf16, D::F16, D::I32, D::I64];
const INTS: [D; 2] = [D::I32, D::I64];

impl D {
    fn name(self) -> &'static str {
        match self {
            D::Bool => "bool",
            D::I32 => "i32",
            D::I64 => "i64",
            D::F16 => "f16",
            D::Bf16 => "bf16",
            D::F32 => "f32",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, D::F16 | D::Bf16 | D::F32)
    }

    fn is_int(self) -> bool {
        matches!(self, D::I32 | D::I64)
    }
}

type Shape = Vec<u32>;

/// NumPy broadcasting, as the language does it.
fn broadcast_shapes(a: &[u32], b: &[u32]) -> Option<Shape> {
    let rank = a.len().max(b.len());
    let dim = |s: &[u32], i: usize| {
        if i < rank - s.len() {
            1
        } else {
            s[i - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Does `from` broadcast to exactly `to`?
fn fits(from: &[u32], to: &[u32]) -> bool {
    broadcast_shapes(from, to).as_deref() == Some(to)
}

fn numel(s: &[u32]) -> u64 {
    s.iter().map(|&d| u64::from(d)).product()
}

// Literals, as text. Integer ones take any numeric type; float ones only float types.
const INT_LITS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "-1",
    "16",
    "255",
    "65535",
    "2147483647",
    "-2147483648",
    "0x7fffffff",
    "4294967295",
    "9223372036854775807",
    "-9223372036854775807",
];
const FLOAT_LITS: &[&str] = &[
    "0.0",
    "-0.0",
    "1.0",
    "-1.0",
    "0.5",
    "1e-6",
    "1e-40",
    "3.4e38",
    "1e30",
    "65504.0",
    "65520.0",
    "2.5e3",
    "inf",
    "-inf",
    "(0.0 / 0.0)",
    "-3.75",
];

// ---- the generator ------------------------------------------------------------------------

/// A generated expression: its text, element type, shape, and whether it is a compile-time
/// constant (constants fold, and are always scalars).
#[derive(Clone, Debug)]
struct Ex {
    t: String,
    d: D,
    s: Shape,
    k: bool,
}

#[derive(Clone, Debug)]
struct Var {
    name: String,
    d: D,
    s: Shape,
    mutable: bool,
    k: bool,
    is_loop: bool,
}

#[derive(Clone, Debug)]
struct PtrParam {
    name: String,
    d: D,
    mutable: bool,
}

#[derive(Clone, Debug)]
struct ScalarParam {
    name: String,
    d: D,
    /// Used for loop bounds and masks: small at run time.
    size: bool,
}

/// What a program contains, for the known-defect filters and the CPU run.
#[derive(Clone, Debug, Default)]
struct Features {
    dots: usize,
    dot_in_loop: bool,
    dot_in_i64_loop: bool,
    max_elems: u64,
    loops: usize,
    max_loop_depth: usize,
}

struct DotPlan {
    t: D,
    k: u32,
    a: String,
    b: String,
}

struct Gen {
    rng: Rng,
    ptrs: Vec<PtrParam>,
    scalars: Vec<ScalarParam>,
    scopes: Vec<Vec<Var>>,
    helpers: Vec<String>,
    helper_depth: u32,
    next_id: usize,
    dims: [u32; 2],
    consts: Vec<(String, u32)>,
    flags: Vec<String>,
    /// Element types of the loops around what is being generated (helpers included: they are
    /// inlined there).
    loops: Vec<D>,
    ifs: usize,
    stmts: usize,
    feat: Features,
    dot: Option<DotPlan>,
    /// The element type of `out`, the parameter only the final store writes.
    out: D,
}

/// A generated program.
struct Program {
    text: String,
    feat: Features,
}

fn generate(seed: u64) -> Program {
    let mut g = Gen {
        rng: Rng(seed),
        ptrs: vec![],
        scalars: vec![],
        scopes: vec![vec![]],
        helpers: vec![],
        helper_depth: 0,
        next_id: 0,
        dims: [1, 1],
        consts: vec![],
        flags: vec![],
        loops: vec![],
        ifs: 0,
        stmts: 0,
        feat: Features::default(),
        dot: None,
        out: D::F32,
    };
    g.program()
}

impl Gen {
    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id - 1
    }

    fn note(&mut self, s: &[u32]) {
        self.feat.max_elems = self.feat.max_elems.max(numel(s));
    }

    fn program(&mut self) -> Program {
        let has_dot = self.rng.chance(0.3);
        if has_dot {
            let m = self.rng.pick(&[16, 32, 64, 128, 256]);
            let n = self.rng.pick(&[16, 32, 64, 128, 256]);
            self.dims = [m, n];
        } else if self.rng.chance(0.04) {
            // Sometimes far larger tiles, up to the limit.
            self.dims = self.rng.pick(&[
                [1024, 1024],
                [1 << 20, 1],
                [1, 1 << 20],
                [2048, 256],
                [4096, 64],
                [8192, 8],
            ]);
        } else {
            let ra = self.rng.below(13) as u32;
            let rb = self.rng.below(13 - ra as usize) as u32;
            self.dims = [1 << ra, 1 << rb];
        }
        // Compile-time parameters for the dimensions and a flag, sometimes.
        let mut generics = vec![];
        if self.rng.chance(0.3) {
            generics.push(format!("RA: i32 = {}", self.dims[0]));
            generics.push(format!("RB: i32 = {}", self.dims[1]));
            self.consts.push(("RA".into(), self.dims[0]));
            self.consts.push(("RB".into(), self.dims[1]));
        }
        if self.rng.chance(0.2) {
            let v = self.rng.chance(0.5);
            generics.push(format!("FLAG: bool = {v}"));
            self.flags.push("FLAG".into());
        }
        // Run-time parameters.
        let nptrs = 2 + self.rng.below(4);
        for i in 0..nptrs {
            let d = self.rng.pick(&MEMORY);
            let mutable = self.rng.chance(0.5);
            self.ptrs.push(PtrParam {
                name: format!("p{i}"),
                d,
                mutable,
            });
        }
        if !self.ptrs.iter().any(|p| p.mutable) {
            self.ptrs[0].mutable = true;
        }
        if self.rng.chance(0.5)
            && !self
                .ptrs
                .iter()
                .any(|p| p.mutable && matches!(p.d, D::F32 | D::I32))
        {
            let d = self.rng.pick(&[D::F32, D::I32]);
            self.ptrs.push(PtrParam {
                name: "acc_out".into(),
                d,
                mutable: true,
            });
        }
        if has_dot {
            let t = self.rng.pick(&[D::Bf16, D::F16]);
            let k = self.rng.pick(&[16, 32, 64]);
            self.ptrs.push(PtrParam {
                name: "a".into(),
                d: t,
                mutable: false,
            });
            let b = if self.rng.chance(0.3) {
                "a".to_string()
            } else {
                self.ptrs.push(PtrParam {
                    name: "b".into(),
                    d: t,
                    mutable: false,
                });
                "b".to_string()
            };
            self.ptrs.push(PtrParam {
                name: "c".into(),
                d: self.rng.pick(&[D::F32, D::F32, D::Bf16, D::F16]),
                mutable: true,
            });
            self.dot = Some(DotPlan {
                t,
                k,
                a: "a".into(),
                b,
            });
        }
        self.scalars.push(ScalarParam {
            name: "n".into(),
            d: D::I32,
            size: true,
        });
        if has_dot || self.rng.chance(0.5) {
            self.scalars.push(ScalarParam {
                name: "n64".into(),
                d: D::I64,
                size: true,
            });
        }
        for (name, d, p) in [("z", D::I32, 0.5), ("w", D::I64, 0.3), ("s", D::F32, 0.5)] {
            if self.rng.chance(p) {
                self.scalars.push(ScalarParam {
                    name: name.into(),
                    d,
                    size: false,
                });
            }
        }
        self.out = self.rng.pick(&MEMORY);
        let mut params: Vec<String> = self
            .ptrs
            .iter()
            .map(|p| {
                let m = if p.mutable { "mut " } else { "" };
                format!("{}: *{m}{}", p.name, p.d.name())
            })
            .chain(
                self.scalars
                    .iter()
                    .map(|s| format!("{}: {}", s.name, s.d.name())),
            )
            .chain([format!("out: *mut {}", self.out.name())])
            .collect();
        // Any order.
        for i in (1..params.len()).rev() {
            let j = self.rng.below(i + 1);
            params.swap(i, j);
        }

        let mut body = vec![];
        let top = 3 + self.rng.below(14);
        for _ in 0..top {
            if self.stmts >= MAX_STATEMENTS {
                break;
            }
            self.stmt(&mut body, 1);
        }
        if has_dot && self.feat.dots == 0 {
            self.dot_block(&mut body, 1);
        }
        self.final_store(&mut body);

        let mut text = String::new();
        for h in &self.helpers {
            text.push_str(h);
            text.push_str("\n\n");
        }
        let generics = if generics.is_empty() {
            String::new()
        } else {
            format!("<{}>", generics.join(", "))
        };
        let _ = writeln!(text, "kernel fz{generics}({}) {{", params.join(", "));
        for l in body {
            text.push_str(&l);
            text.push('\n');
        }
        text.push_str("}\n");
        Program {
            text,
            feat: self.feat.clone(),
        }
    }

    // ---- names and pieces ----

    fn dim(&mut self, n: u32) -> String {
        let named: Vec<String> = self
            .consts
            .iter()
            .filter(|(_, v)| *v == n)
            .map(|(k, _)| k.clone())
            .collect();
        if !named.is_empty() && self.rng.chance(0.6) {
            self.rng.pick(&named)
        } else {
            n.to_string()
        }
    }

    fn shape_text(&mut self, s: &[u32]) -> String {
        let dims: Vec<String> = s.iter().map(|&d| self.dim(d)).collect();
        format!("[{}]", dims.join(", "))
    }

    fn palette(&self) -> Vec<Shape> {
        let [a, b] = self.dims;
        vec![
            vec![],
            vec![a],
            vec![b],
            vec![a, b],
            vec![a, b],
            vec![a, 1],
            vec![1, b],
        ]
    }

    /// A random shape that broadcasts to `s`.
    fn sub_shape(&mut self, s: &[u32]) -> Shape {
        if self.rng.chance(0.6) {
            return s.to_vec();
        }
        let drop = self.rng.below(s.len() + 1);
        s[drop..]
            .iter()
            .map(|&d| if self.rng.chance(0.4) { 1 } else { d })
            .collect()
    }

    fn vars(&self) -> impl Iterator<Item = &Var> {
        self.scopes.iter().flatten()
    }

    fn bind(&mut self, v: Var) {
        self.scopes.last_mut().unwrap().push(v);
    }

    fn size_name(&mut self) -> Option<String> {
        let sizes: Vec<String> = self
            .scalars
            .iter()
            .filter(|s| s.size)
            .map(|s| s.name.clone())
            .collect();
        (!sizes.is_empty()).then(|| self.rng.pick(&sizes))
    }

    fn loop_var(&mut self) -> Option<String> {
        let ks: Vec<String> = self
            .vars()
            .filter(|v| v.is_loop)
            .map(|v| v.name.clone())
            .collect();
        (!ks.is_empty()).then(|| self.rng.pick(&ks))
    }

    fn cast(e: Ex, d: D) -> Ex {
        if e.d == d {
            return e;
        }
        Ex {
            t: format!("({} as {})", e.t, d.name()),
            d,
            ..e
        }
    }

    /// A literal of type `d`: a compile-time constant.
    fn lit(&mut self, d: D) -> Ex {
        let t = match d {
            D::Bool => self.rng.pick(&["true", "false"]).to_string(),
            _ => {
                let l = if d.is_int() && self.rng.chance(0.8) || self.rng.chance(0.3) {
                    self.rng.pick(INT_LITS)
                } else {
                    self.rng.pick(FLOAT_LITS)
                };
                format!("({l} as {})", d.name())
            }
        };
        Ex {
            t,
            d,
            s: vec![],
            k: true,
        }
    }

    /// A bare (weakly typed) literal to combine with a tile of type `d`.
    fn weak_lit(&mut self, d: D) -> String {
        let l = if d.is_int() || self.rng.chance(0.3) {
            self.rng.pick(INT_LITS)
        } else {
            self.rng.pick(FLOAT_LITS)
        };
        if l.starts_with('-') {
            format!("({l})")
        } else {
            l.to_string()
        }
    }

    // ---- expressions ----

    /// An expression of element type `d` whose shape broadcasts to `s`; with `tile`, not a
    /// compile-time constant.
    fn expr(&mut self, d: D, s: &[u32], depth: u32, tile: bool) -> Ex {
        self.note(s);
        for _ in 0..12 {
            let e = if depth == 0 || self.rng.chance(0.3) {
                self.leaf(d, s)
            } else {
                self.compound(d, s, depth - 1)
            };
            if let Some(e) = e {
                if !(tile && e.k) {
                    debug_assert!(e.d == d && fits(&e.s, s), "{e:?} for {d:?} {s:?}");
                    return e;
                }
            }
        }
        self.fallback(d, s)
    }

    /// As [`Gen::expr`], of exactly shape `s` (broadcast if need be).
    fn exact(&mut self, d: D, s: &[u32], depth: u32) -> Ex {
        let e = self.expr(d, s, depth, false);
        if e.s == s {
            return e;
        }
        let st = self.shape_text(s);
        Ex {
            t: format!("broadcast({}, {st})", e.t),
            d,
            s: s.to_vec(),
            k: false,
        }
    }

    /// A tile that always exists: a filled tile, or the program id.
    fn fallback(&mut self, d: D, s: &[u32]) -> Ex {
        if s.is_empty() {
            let t = if d == D::Bool {
                "(program_id(0) > 0)".to_string()
            } else {
                Self::cast(self.pid(), d).t
            };
            return Ex {
                t,
                d,
                s: vec![],
                k: false,
            };
        }
        let st = self.shape_text(s);
        Ex {
            t: format!("zeros({st}, {})", d.name()),
            d,
            s: s.to_vec(),
            k: false,
        }
    }

    fn pid(&mut self) -> Ex {
        let t = match self.rng.below(6) {
            0 => "program_id(1)",
            1 => "num_programs(0)",
            _ => "program_id(0)",
        };
        Ex {
            t: t.into(),
            d: D::I32,
            s: vec![],
            k: false,
        }
    }

    fn leaf(&mut self, d: D, s: &[u32]) -> Option<Ex> {
        match self.rng.below(11) {
            0..=3 => self.var_leaf(d, s),
            4 => Some(self.lit(d)),
            5 => {
                if self.scalars.is_empty() {
                    return None;
                }
                let p = self.rng.pick(&self.scalars);
                Some(Self::cast(
                    Ex {
                        t: p.name,
                        d: p.d,
                        s: vec![],
                        k: false,
                    },
                    d,
                ))
            }
            6 => {
                let p = self.pid();
                Some(Self::cast(p, d))
            }
            7 => self.range_leaf(d, s),
            8 | 9 => self.load_leaf(d, s),
            _ => {
                if s.is_empty() {
                    return None;
                }
                let st = self.shape_text(s);
                let t = if self.rng.chance(0.5) {
                    format!("zeros({st}, {})", d.name())
                } else {
                    let v = self.lit(d).t;
                    format!("full({st}, {v}, {})", d.name())
                };
                Some(Ex {
                    t,
                    d,
                    s: s.to_vec(),
                    k: false,
                })
            }
        }
    }

    fn var_leaf(&mut self, d: D, s: &[u32]) -> Option<Ex> {
        let all: Vec<Var> = self.vars().filter(|v| fits(&v.s, s)).cloned().collect();
        if all.is_empty() {
            return None;
        }
        let same: Vec<Var> = all.iter().filter(|v| v.d == d).cloned().collect();
        let v = if !same.is_empty() && self.rng.chance(0.75) {
            self.rng.pick(&same)
        } else {
            self.rng.pick(&all)
        };
        Some(Self::cast(
            Ex {
                t: v.name,
                d: v.d,
                s: v.s,
                k: v.k,
            },
            d,
        ))
    }

    fn range_leaf(&mut self, d: D, s: &[u32]) -> Option<Ex> {
        if s.is_empty() {
            return None;
        }
        let axis = self.rng.below(s.len());
        let n = s[axis];
        let nt = self.dim(n);
        let base = if self.rng.chance(0.3) {
            format!("(program_id(0) * {nt} + range({nt}))")
        } else {
            format!("range({nt})")
        };
        let (t, shape) = match (s.len(), axis) {
            (1, _) => (base, vec![n]),
            (_, 0) => (format!("{base}[:, None]"), vec![n, 1]),
            _ if self.rng.chance(0.5) => (base, vec![n]),
            _ => (format!("{base}[None, :]"), vec![1, n]),
        };
        Some(Self::cast(
            Ex {
                t,
                d: D::I32,
                s: shape,
                k: false,
            },
            d,
        ))
    }

    fn load_leaf(&mut self, d: D, s: &[u32]) -> Option<Ex> {
        if self.ptrs.is_empty() {
            return None;
        }
        let same: Vec<PtrParam> = self.ptrs.iter().filter(|p| p.d == d).cloned().collect();
        let p = if !same.is_empty() && self.rng.chance(0.7) {
            self.rng.pick(&same)
        } else {
            self.rng.pick(&self.ptrs)
        };
        let ps = self.sub_shape(s);
        let offs = self.offsets(&ps, 1);
        let t = if self.rng.chance(0.4) {
            let m = self.mask(&ps, 1);
            if self.rng.chance(0.6) {
                let o = if self.rng.chance(0.5) {
                    self.weak_lit(p.d)
                } else {
                    self.lit(p.d).t
                };
                format!("load({} + {offs}, mask: {m}, other: {o})", p.name)
            } else {
                format!("load({} + {offs}, mask: {m})", p.name)
            }
        } else if ps.is_empty() && self.rng.chance(0.3) {
            format!("load({})", p.name)
        } else {
            format!("load({} + {offs})", p.name)
        };
        Some(Self::cast(
            Ex {
                t,
                d: p.d,
                s: ps,
                k: false,
            },
            d,
        ))
    }

    /// Integer offsets of exactly shape `ps`.
    fn offsets(&mut self, ps: &[u32], depth: u32) -> String {
        let base = match ps.len() {
            0 => match self.rng.below(6) {
                0 => "0".to_string(),
                1 => "program_id(0)".to_string(),
                2 => self.size_name().unwrap_or_else(|| "3".into()),
                3 => {
                    let d = self.rng.pick(&INTS);
                    format!("({} & 1023)", self.expr(d, &[], depth, false).t)
                }
                4 => "(program_id(0) * 5 + 1)".to_string(),
                _ => "7".to_string(),
            },
            1 => {
                let nt = self.dim(ps[0]);
                let ints: Vec<PtrParam> =
                    self.ptrs.iter().filter(|p| p.d.is_int()).cloned().collect();
                match self.rng.below(7) {
                    0 | 1 => format!("range({nt})"),
                    2 => format!("(program_id(0) * {nt} + range({nt}))"),
                    3 => format!("(range({nt}) * 2 + 1)"),
                    4 => {
                        let d = self.rng.pick(&INTS);
                        format!("({} & 1023)", self.exact(d, ps, depth).t)
                    }
                    5 if !ints.is_empty() => {
                        // A gather through loaded indices (embedding style).
                        let p = self.rng.pick(&ints);
                        format!("load({} + range({nt}))", p.name)
                    }
                    _ => format!("(range({nt}) ^ 1)"),
                }
            }
            _ => {
                let (rt, ct) = (self.dim(ps[0]), self.dim(ps[1]));
                let size = self.size_name();
                match self.rng.below(6) {
                    0..=2 => format!("(range({rt})[:, None] * {ct} + range({ct})[None, :])"),
                    3 => format!("(range({rt})[:, None] + range({ct})[None, :] * {rt})"),
                    4 if size.is_some() => format!(
                        "(range({rt})[:, None] * {} + range({ct})[None, :])",
                        size.unwrap()
                    ),
                    _ => {
                        let d = self.rng.pick(&INTS);
                        format!("({} & 1023)", self.exact(d, ps, depth).t)
                    }
                }
            }
        };
        match self.loop_var() {
            Some(k) if self.rng.chance(0.3) => format!("({base} + {k})"),
            _ => base,
        }
    }

    /// A `bool` mask that broadcasts to `ps`.
    fn mask(&mut self, ps: &[u32], depth: u32) -> String {
        let size = self.size_name();
        match size {
            Some(n) if self.rng.chance(0.5) => {
                let o = self.offsets(ps, depth);
                format!("({o} < {n})")
            }
            _ => {
                let sub = self.sub_shape(ps);
                self.expr(D::Bool, &sub, depth, true).t
            }
        }
    }

    fn compound(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        match self.rng.below(100) {
            0..=29 => self.binary(d, s, depth),
            30..=36 => self.unary(d, s, depth),
            37..=44 => {
                if !d.is_float() {
                    return None;
                }
                let f = self.rng.pick(&[
                    "exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sigmoid", "tanh", "sin", "cos",
                ]);
                let a = self.expr(d, s, depth, false);
                Some(Ex {
                    t: format!("{f}({})", a.t),
                    ..a
                })
            }
            45..=48 => {
                if !d.is_float() {
                    return None;
                }
                let a = self.expr(d, s, depth, false);
                let b = self.expr(d, s, depth, false);
                let c = self.expr(d, s, depth, false);
                let shape = broadcast_shapes(&broadcast_shapes(&a.s, &b.s)?, &c.s)?;
                Some(Ex {
                    t: format!("fma({}, {}, {})", a.t, b.t, c.t),
                    d,
                    s: shape,
                    k: false,
                })
            }
            49..=54 => {
                if d == D::Bool {
                    return None;
                }
                let f = self.rng.pick(&["max", "min"]);
                let a = self.expr(d, s, depth, false);
                let (bt, bs, bk) = if !a.k && self.rng.chance(0.3) {
                    (self.weak_lit(d), vec![], false)
                } else {
                    let b = self.expr(d, s, depth, false);
                    (b.t, b.s, b.k)
                };
                Some(Ex {
                    t: format!("{f}({}, {bt})", a.t),
                    d,
                    s: broadcast_shapes(&a.s, &bs)?,
                    k: a.k && bk,
                })
            }
            55..=64 => {
                let from = self.rng.pick(&ALL);
                let a = self.expr(from, s, depth, false);
                Some(Self::cast(a, d))
            }
            65..=72 => {
                let c = self.expr(D::Bool, s, depth, true);
                let a = self.expr(d, s, depth, false);
                let (bt, bs) = if d != D::Bool && !a.k && self.rng.chance(0.25) {
                    (self.weak_lit(d), vec![])
                } else {
                    let b = self.expr(d, s, depth, false);
                    (b.t, b.s)
                };
                let shape = broadcast_shapes(&broadcast_shapes(&c.s, &a.s)?, &bs)?;
                Some(Ex {
                    t: format!("where({}, {}, {bt})", c.t, a.t),
                    d,
                    s: shape,
                    k: false,
                })
            }
            73..=81 => self.reduce(d, s, depth),
            82..=88 => self.shape_op(d, s, depth),
            89..=93 => self.helper_call(d, s, depth),
            _ => self.dot_expr(d, s, depth),
        }
    }

    fn binary(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        if d == D::Bool {
            if self.rng.chance(0.55) {
                // A comparison.
                let e = self.rng.pick(&ALL);
                let ops: &[&str] = if e == D::Bool {
                    &["==", "!="]
                } else {
                    &["<", "<=", ">", ">=", "==", "!="]
                };
                let op = self.rng.pick(ops);
                let a = self.expr(e, s, depth, false);
                let (bt, bs, bk) = if e != D::Bool && !a.k && self.rng.chance(0.3) {
                    (self.weak_lit(e), vec![], false)
                } else {
                    let b = self.expr(e, s, depth, false);
                    (b.t, b.s, b.k)
                };
                return Some(Ex {
                    t: format!("({} {op} {bt})", a.t),
                    d,
                    s: broadcast_shapes(&a.s, &bs)?,
                    k: a.k && bk,
                });
            }
            let op = self.rng.pick(&["&", "|", "^", "&&", "||"]);
            let a = self.expr(D::Bool, s, depth, false);
            let b = self.expr(D::Bool, s, depth, false);
            return Some(Ex {
                t: format!("({} {op} {})", a.t, b.t),
                d,
                s: broadcast_shapes(&a.s, &b.s)?,
                k: a.k && b.k,
            });
        }
        let ops: &[&str] = if d.is_int() {
            &["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>", "+", "*"]
        } else {
            &["+", "-", "*", "/", "%", "+", "*"]
        };
        let op = self.rng.pick(ops);
        // Integer division of two constants by zero is a compile-time error: keep one side a
        // tile.
        let divides = d.is_int() && (op == "/" || op == "%");
        let a = self.expr(d, s, depth, false);
        let (bt, bs, bk) = if !a.k && self.rng.chance(0.3) {
            (self.weak_lit(d), vec![], false)
        } else {
            let b = self.expr(d, s, depth, divides && a.k);
            (b.t, b.s, b.k)
        };
        Some(Ex {
            t: format!("({} {op} {bt})", a.t),
            d,
            s: broadcast_shapes(&a.s, &bs)?,
            k: a.k && bk,
        })
    }

    fn unary(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        let a = self.expr(d, s, depth, false);
        let t = match d {
            D::Bool => format!("(!{})", a.t),
            _ if d.is_int() && self.rng.chance(0.3) => format!("(!{})", a.t),
            _ if self.rng.chance(0.5) => format!("abs({})", a.t),
            _ => format!("(-{})", a.t),
        };
        Some(Ex { t, ..a })
    }

    fn reduce(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        if d == D::Bool {
            return None;
        }
        let (op, src_d) = if d == D::I32 && self.rng.chance(0.25) {
            ("argmax", self.rng.pick(&NUMERIC))
        } else {
            (self.rng.pick(&["sum", "max", "min", "sum"]), d)
        };
        let [a, b] = self.dims;
        let other = self.rng.pick(&[a, b, 1, 4]);
        match s.len() {
            0 => {
                let mut shapes: Vec<Shape> = self
                    .palette()
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect();
                shapes.push(vec![other]);
                let src = self.rng.pick(&shapes);
                let x = self.exact(src_d, &src, depth);
                let t = if src.len() == 1 && self.rng.chance(0.3) {
                    format!("{op}({}, axis: 0)", x.t)
                } else {
                    format!("{op}({})", x.t)
                };
                Some(Ex {
                    t,
                    d,
                    s: vec![],
                    k: false,
                })
            }
            1 => {
                let n = s[0];
                if numel(&[n, other]) > 1 << 20 {
                    return None;
                }
                let (src, axis) = if self.rng.chance(0.5) {
                    (vec![n, other], 1)
                } else {
                    (vec![other, n], 0)
                };
                let x = self.exact(src_d, &src, depth);
                Some(Ex {
                    t: format!("{op}({}, axis: {axis})", x.t),
                    d,
                    s: vec![n],
                    k: false,
                })
            }
            _ => {
                let (r, c) = (s[0], s[1]);
                if self.rng.chance(0.5) {
                    if numel(&[r, other]) > 1 << 20 {
                        return None;
                    }
                    let x = self.exact(src_d, &[r, other], depth);
                    Some(Ex {
                        t: format!("{op}({}, axis: 1)[:, None]", x.t),
                        d,
                        s: vec![r, 1],
                        k: false,
                    })
                } else {
                    if numel(&[other, c]) > 1 << 20 {
                        return None;
                    }
                    let x = self.exact(src_d, &[other, c], depth);
                    Some(Ex {
                        t: format!("{op}({}, axis: 0)[None, :]", x.t),
                        d,
                        s: vec![1, c],
                        k: false,
                    })
                }
            }
        }
    }

    fn shape_op(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        if s.is_empty() {
            return None;
        }
        let st = self.shape_text(s);
        match self.rng.below(4) {
            0 => {
                let sub = self.sub_shape(s);
                let x = self.expr(d, &sub, depth, false);
                Some(Ex {
                    t: format!("broadcast({}, {st})", x.t),
                    d,
                    s: s.to_vec(),
                    k: false,
                })
            }
            1 if s.len() == 2 => {
                let x = self.exact(d, &[s[1], s[0]], depth);
                Some(Ex {
                    t: format!("trans({})", x.t),
                    d,
                    s: s.to_vec(),
                    k: false,
                })
            }
            2 => {
                let alt = match s {
                    [n] if *n >= 2 => vec![n / 2, 2],
                    [n] => vec![1, *n],
                    [r, c] if self.rng.chance(0.5) => vec![r * c],
                    [r, c] => vec![*c, *r],
                    _ => return None,
                };
                let x = self.exact(d, &alt, depth);
                Some(Ex {
                    t: format!("reshape({}, {st})", x.t),
                    d,
                    s: s.to_vec(),
                    k: false,
                })
            }
            _ if s.len() == 2 => {
                if self.rng.chance(0.5) {
                    let x = self.exact(d, &[s[0]], depth);
                    Some(Ex {
                        t: format!("({})[:, None]", x.t),
                        d,
                        s: vec![s[0], 1],
                        k: false,
                    })
                } else {
                    let x = self.exact(d, &[s[1]], depth);
                    Some(Ex {
                        t: format!("({})[None, :]", x.t),
                        d,
                        s: vec![1, s[1]],
                        k: false,
                    })
                }
            }
            _ => None,
        }
    }

    /// A call of a new helper, whose body is generated for the argument types at hand.
    fn helper_call(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        if self.helper_depth >= 2 || self.helpers.len() >= 6 {
            return None;
        }
        let nargs = 1 + self.rng.below(3);
        let mut args = vec![];
        let mut params = vec![];
        let mut inner = vec![];
        for i in 0..nargs {
            let ad = if self.rng.chance(0.6) {
                d
            } else {
                self.rng.pick(&ALL)
            };
            let sub = self.sub_shape(s);
            let a = self.expr(ad, &sub, depth.saturating_sub(1), false);
            let name = format!("x{i}");
            params.push(if self.rng.chance(0.4) {
                format!("{name}: {}", ad.name())
            } else {
                name.clone()
            });
            inner.push(Var {
                name,
                d: ad,
                s: a.s.clone(),
                mutable: false,
                k: a.k,
                is_loop: false,
            });
            args.push(a.t);
        }
        let mut inner_ptrs = vec![];
        if !self.ptrs.is_empty() && self.rng.chance(0.3) {
            let p = self.rng.pick(&self.ptrs);
            params.push("q".into());
            args.push(p.name.clone());
            inner_ptrs.push(PtrParam {
                name: "q".into(),
                ..p
            });
        }
        let name = format!("h{}", self.id());
        // A helper sees only its parameters.
        let scopes = std::mem::replace(&mut self.scopes, vec![inner]);
        let ptrs = std::mem::replace(&mut self.ptrs, inner_ptrs);
        let scalars = std::mem::take(&mut self.scalars);
        // Nor the kernel's compile-time parameters.
        let consts = std::mem::take(&mut self.consts);
        self.helper_depth += 1;
        let mut lines = vec![];
        for _ in 0..self.rng.below(3) {
            let ld = self.rng.pick(&ALL);
            let ls = self.rng.pick(&self.palette());
            let e = self.expr(ld, &ls, depth, false);
            let v = format!("t{}", self.id());
            lines.push(format!("    let {v} = {};", e.t));
            self.bind(Var {
                name: v,
                d: ld,
                s: e.s,
                mutable: false,
                k: e.k,
                is_loop: false,
            });
        }
        let tail = self.expr(d, s, depth, false);
        self.helper_depth -= 1;
        self.scopes = scopes;
        self.ptrs = ptrs;
        self.scalars = scalars;
        self.consts = consts;
        let mut def = format!("fn {name}({}) {{\n", params.join(", "));
        for l in lines {
            def.push_str(&l);
            def.push('\n');
        }
        let _ = write!(def, "    {}\n}}", tail.t);
        self.helpers.push(def);
        Some(Ex {
            t: format!("{name}({})", args.join(", ")),
            d,
            s: tail.s,
            k: tail.k,
        })
    }

    /// `dot(x, y)` or `dot(x, y, acc)` of any shapes giving `s`.
    fn dot_expr(&mut self, d: D, s: &[u32], depth: u32) -> Option<Ex> {
        if d != D::F32 || s.len() != 2 || numel(s) > 1 << 16 {
            return None;
        }
        let (m, n) = (s[0], s[1]);
        let k = if self.rng.chance(0.85) {
            self.rng.pick(&[16, 32, 64])
        } else {
            self.rng.pick(&[1, 2, 4, 8])
        };
        if numel(&[m, k]) > 1 << 16 || numel(&[k, n]) > 1 << 16 {
            return None;
        }
        let t = if self.rng.chance(0.8) {
            self.rng.pick(&[D::Bf16, D::F16])
        } else {
            D::F32
        };
        let x = self.exact(t, &[m, k], depth);
        let y = if self.rng.chance(0.3) {
            format!("trans({})", self.exact(t, &[n, k], depth).t)
        } else {
            self.exact(t, &[k, n], depth).t
        };
        let text = if self.rng.chance(0.4) {
            let acc = self.exact(D::F32, s, depth);
            format!("dot({}, {y}, {})", x.t, acc.t)
        } else {
            format!("dot({}, {y})", x.t)
        };
        self.feat.dots += 1;
        self.feat.dot_in_loop |= !self.loops.is_empty();
        self.feat.dot_in_i64_loop |= self.loops.contains(&D::I64);
        Some(Ex {
            t: text,
            d,
            s: s.to_vec(),
            k: false,
        })
    }

    // ---- statements ----

    fn stmt(&mut self, out: &mut Vec<String>, ind: usize) {
        self.stmts += 1;
        let pad = "    ".repeat(ind);
        let depth = 1 + self.rng.below(3) as u32;
        let can_nest = self.stmts < MAX_STATEMENTS - 2;
        let mutables: Vec<Var> = self.vars().filter(|v| v.mutable).cloned().collect();
        match self.rng.below(100) {
            0..=25 => self.let_stmt(out, ind, false, depth),
            26..=33 => self.let_stmt(out, ind, true, depth),
            34..=46 if !mutables.is_empty() => {
                let v = self.rng.pick(&mutables);
                let e = self.expr(v.d, &v.s, depth, false);
                let op = if v.d == D::Bool {
                    "="
                } else {
                    self.rng.pick(&["=", "=", "+=", "-=", "*=", "/="])
                };
                out.push(format!("{pad}{} {op} {};", v.name, e.t));
            }
            47..=60 => self.store_stmt(out, ind, false, depth),
            61..=66 => self.store_stmt(out, ind, true, depth),
            67..=75 if self.loops.len() < 2 && can_nest => self.for_stmt(out, ind),
            76..=83 if self.ifs < 2 && can_nest => self.if_stmt(out, ind),
            84..=88 if self.dot.is_some() && can_nest => self.dot_block(out, ind),
            89..=92 => self.store_helper(out, ind, depth),
            93..=94 => {
                let msg = "\"tile limit\"";
                let [a, b] = self.dims;
                let (at, bt) = (self.dim(a), self.dim(b));
                out.push(format!(
                    "{pad}static_assert({at} * {bt} <= 1048576, {msg});"
                ));
            }
            _ => self.let_stmt(out, ind, false, depth),
        }
    }

    fn let_stmt(&mut self, out: &mut Vec<String>, ind: usize, mutable: bool, depth: u32) {
        let pad = "    ".repeat(ind);
        let d = self.rng.pick(&ALL);
        let s = self.rng.pick(&self.palette());
        let e = if mutable && self.rng.chance(0.6) {
            self.exact(d, &s, depth)
        } else {
            self.expr(d, &s, depth, false)
        };
        let name = format!("v{}", self.id());
        let ann = if self.rng.chance(0.15) {
            format!(": {}", d.name())
        } else {
            String::new()
        };
        let m = if mutable { "mut " } else { "" };
        out.push(format!("{pad}let {m}{name}{ann} = {};", e.t));
        self.bind(Var {
            name,
            d,
            s: e.s,
            mutable,
            // A mutable variable lives in the IR.
            k: e.k && !mutable,
            is_loop: false,
        });
    }

    fn store_stmt(&mut self, out: &mut Vec<String>, ind: usize, atomic: bool, depth: u32) {
        let pad = "    ".repeat(ind);
        let targets: Vec<PtrParam> = self
            .ptrs
            .iter()
            .filter(|p| p.mutable && (!atomic || matches!(p.d, D::F32 | D::I32)))
            .cloned()
            .collect();
        if targets.is_empty() {
            return self.let_stmt(out, ind, false, depth);
        }
        let q = self.rng.pick(&targets);
        let ps = self.rng.pick(&self.palette());
        let offs = self.offsets(&ps, 1);
        let v = self.expr(q.d, &ps, depth, false);
        let f = if atomic { "atomic_add" } else { "store" };
        let target = if ps.is_empty() && self.rng.chance(0.3) {
            q.name.clone()
        } else {
            format!("{} + {offs}", q.name)
        };
        if self.rng.chance(0.4) {
            let m = self.mask(&ps, 1);
            out.push(format!("{pad}{f}({target}, {}, mask: {m});", v.t));
        } else {
            out.push(format!("{pad}{f}({target}, {});", v.t));
        }
    }

    /// A helper that stores (or adds) its value, called as a statement.
    fn store_helper(&mut self, out: &mut Vec<String>, ind: usize, depth: u32) {
        let targets: Vec<PtrParam> = self.ptrs.iter().filter(|p| p.mutable).cloned().collect();
        if targets.is_empty() || self.helpers.len() >= 6 {
            return self.let_stmt(out, ind, false, depth);
        }
        let pad = "    ".repeat(ind);
        let q = self.rng.pick(&targets);
        let ps = self.rng.pick(&self.palette());
        let offs = self.offsets(&ps, 1);
        let v = self.expr(q.d, &ps, depth, false);
        let f = if matches!(q.d, D::F32 | D::I32) && self.rng.chance(0.3) {
            "atomic_add"
        } else {
            "store"
        };
        let name = format!("put{}", self.id());
        if self.rng.chance(0.5) {
            let m = self.mask(&ps, 1);
            self.helpers.push(format!(
                "fn {name}(p, v, m) {{\n    {f}(p, v, mask: m);\n}}"
            ));
            out.push(format!("{pad}{name}({} + {offs}, {}, {m});", q.name, v.t));
        } else {
            self.helpers
                .push(format!("fn {name}(p, v) {{\n    {f}(p, v);\n}}"));
            out.push(format!("{pad}{name}({} + {offs}, {});", q.name, v.t));
        }
    }

    fn block(&mut self, out: &mut Vec<String>, ind: usize, max: usize) {
        self.scopes.push(vec![]);
        let n = 1 + self.rng.below(max);
        for i in 0..n {
            if i > 0 && self.stmts >= MAX_STATEMENTS {
                break;
            }
            self.stmt(out, ind);
        }
        self.scopes.pop();
    }

    fn loop_header(&mut self) -> (D, String) {
        let size = self.scalars.iter().any(|s| s.name == "n64");
        if self.rng.chance(0.4) {
            let hi = match self.rng.below(3) {
                0 if size => "n64".to_string(),
                1 => format!("({} as i64)", self.rng.pick(&["5", "17", "32"])),
                _ => "(n as i64)".to_string(),
            };
            let lo = self
                .rng
                .pick(&["0", "0", "(1 as i64)", "(program_id(0) as i64)"]);
            (D::I64, format!("{lo}..{hi}"))
        } else {
            let hi = match self.rng.below(3) {
                0 => self.rng.pick(&["4", "17", "32"]).to_string(),
                _ => "n".to_string(),
            };
            let lo = self.rng.pick(&["0", "0", "1", "program_id(0)"]);
            (D::I32, format!("{lo}..{hi}"))
        }
    }

    fn for_stmt(&mut self, out: &mut Vec<String>, ind: usize) {
        let pad = "    ".repeat(ind);
        let (d, range) = self.loop_header();
        let step = self
            .rng
            .pick(&["", "", " step 2", " step 4", " step 16", " step 32"]);
        let k = format!("k{}", self.id());
        out.push(format!("{pad}for {k} in {range}{step} {{"));
        self.feat.loops += 1;
        self.loops.push(d);
        self.feat.max_loop_depth = self.feat.max_loop_depth.max(self.loops.len());
        self.scopes.push(vec![Var {
            name: k,
            d,
            s: vec![],
            mutable: false,
            k: false,
            is_loop: true,
        }]);
        self.block(out, ind + 1, 4);
        self.scopes.pop();
        self.loops.pop();
        out.push(format!("{pad}}}"));
    }

    fn if_stmt(&mut self, out: &mut Vec<String>, ind: usize) {
        let pad = "    ".repeat(ind);
        let cond = if !self.flags.is_empty() && self.rng.chance(0.2) {
            self.rng.pick(&self.flags)
        } else if self.rng.chance(0.05) {
            self.rng.pick(&["true", "false"]).to_string()
        } else {
            self.expr(D::Bool, &[], 2, true).t
        };
        out.push(format!("{pad}if {cond} {{"));
        self.ifs += 1;
        self.block(out, ind + 1, 3);
        if self.rng.chance(0.5) {
            out.push(format!("{pad}}} else {{"));
            self.block(out, ind + 1, 2);
        }
        self.ifs -= 1;
        out.push(format!("{pad}}}"));
    }

    /// A GEMM-style `dot`: operands loaded from `a` and `b` (through a loop over K with a
    /// carried accumulator, or once), sometimes stored to `c`.
    fn dot_block(&mut self, out: &mut Vec<String>, ind: usize) {
        let Some(plan) = &self.dot else { return };
        let (t, kk, pa, pb) = (plan.t, plan.k, plan.a.clone(), plan.b.clone());
        let pad = "    ".repeat(ind);
        let [m, n] = self.dims;
        let (mt, nt) = (self.dim(m), self.dim(n));
        let id = self.id();
        let (rm, rn, rk, acc) = (
            format!("rm{id}"),
            format!("rn{id}"),
            format!("rk{id}"),
            format!("acc{id}"),
        );
        let pid = if self.rng.chance(0.5) {
            format!("program_id(0) * {mt} + ")
        } else {
            String::new()
        };
        out.push(format!("{pad}let {rm} = ({pid}range({mt}));"));
        out.push(format!("{pad}let {rn} = range({nt});"));
        out.push(format!("{pad}let {rk} = range({kk});"));
        self.stmts += 3;
        for (name, len) in [(&rm, m), (&rn, n), (&rk, kk)] {
            self.bind(Var {
                name: name.clone(),
                d: D::I32,
                s: vec![len],
                mutable: false,
                k: false,
                is_loop: false,
            });
        }
        let masked = self.rng.chance(0.5);
        let looped = self.rng.chance(0.65);
        self.feat.dots += 1;
        if looped {
            let i64_loop = self.rng.chance(0.5);
            let hi = if i64_loop {
                self.rng
                    .pick(&["n64", "n64", "(n as i64)", "(256 as i64)"])
                    .to_string()
            } else {
                self.rng.pick(&["n", "n", "256"]).to_string()
            };
            let step = if self.rng.chance(0.8) {
                kk.to_string()
            } else {
                (kk * 2).to_string()
            };
            let init = if self.rng.chance(0.8) {
                format!("zeros([{mt}, {nt}], f32)")
            } else {
                self.exact(D::F32, &[m, n], 1).t
            };
            out.push(format!("{pad}let mut {acc} = {init};"));
            let k = format!("k{id}");
            out.push(format!("{pad}for {k} in 0..{hi} step {step} {{"));
            self.stmts += 2;
            let loop_d = if i64_loop { D::I64 } else { D::I32 };
            self.feat.loops += 1;
            self.feat.dot_in_loop = true;
            self.feat.dot_in_i64_loop |= i64_loop;
            self.loops.push(loop_d);
            self.feat.max_loop_depth = self.feat.max_loop_depth.max(self.loops.len());
            self.feat.dot_in_i64_loop |= self.loops.contains(&D::I64);
            self.scopes.push(vec![Var {
                name: k.clone(),
                d: loop_d,
                s: vec![],
                mutable: false,
                k: false,
                is_loop: true,
            }]);
            let inner = format!("{pad}    ");
            let ka = format!("ka{id}");
            out.push(format!("{inner}let {ka} = {k} + {rk};"));
            let xm = if masked {
                format!(", mask: ({rm}[:, None] < n) & ({ka}[None, :] < {hi}), other: 0.0")
            } else {
                String::new()
            };
            let ym = if masked {
                format!(", mask: ({ka}[:, None] < {hi}) & ({rn}[None, :] < n), other: 0.0")
            } else {
                String::new()
            };
            let x = if self.rng.chance(0.2) {
                format!("trans(load({pa} + ({ka}[:, None] * {mt} + {rm}[None, :])))")
            } else {
                format!("load({pa} + ({rm}[:, None] * {hi} + {ka}[None, :]){xm})")
            };
            out.push(format!("{inner}let x{id} = {x};"));
            out.push(format!(
                "{inner}let y{id} = load({pb} + ({ka}[:, None] * {nt} + {rn}[None, :]){ym});"
            ));
            self.stmts += 3;
            let ka_d = loop_d;
            self.bind(Var {
                name: ka,
                d: ka_d,
                s: vec![kk],
                mutable: false,
                k: false,
                is_loop: false,
            });
            self.bind(Var {
                name: format!("x{id}"),
                d: t,
                s: vec![m, kk],
                mutable: false,
                k: false,
                is_loop: false,
            });
            self.bind(Var {
                name: format!("y{id}"),
                d: t,
                s: vec![kk, n],
                mutable: false,
                k: false,
                is_loop: false,
            });
            for _ in 0..self.rng.below(3) {
                self.stmt(out, ind + 1);
            }
            let update = match self.rng.below(5) {
                0 => format!("{acc} += dot(x{id}, y{id});"),
                1 => format!("{acc} = dot(x{id}, y{id}, {acc} * 0.5);"),
                2 => format!("{acc} = dot(x{id}, (y{id} * 2.0), {acc});"),
                _ => format!("{acc} = dot(x{id}, y{id}, {acc});"),
            };
            out.push(format!("{inner}{update}"));
            self.stmts += 1;
            self.scopes.pop();
            self.loops.pop();
            out.push(format!("{pad}}}"));
        } else {
            out.push(format!(
                "{pad}let x{id} = load({pa} + ({rm}[:, None] * {kk} + {rk}[None, :]));"
            ));
            out.push(format!(
                "{pad}let y{id} = load({pb} + ({rk}[:, None] * {nt} + {rn}[None, :]));"
            ));
            let bias = if self.rng.chance(0.4) {
                format!(", {}", self.exact(D::F32, &[m, n], 1).t)
            } else {
                String::new()
            };
            out.push(format!("{pad}let {acc} = dot(x{id}, y{id}{bias});"));
            self.stmts += 3;
            self.feat.dot_in_loop |= !self.loops.is_empty();
            self.feat.dot_in_i64_loop |= self.loops.contains(&D::I64);
        }
        self.bind(Var {
            name: acc.clone(),
            d: D::F32,
            s: vec![m, n],
            mutable: looped,
            k: false,
            is_loop: false,
        });
        if self.rng.chance(0.7) {
            let c = self
                .ptrs
                .iter()
                .find(|p| p.name == "c")
                .cloned()
                .expect("c");
            let mask = if self.rng.chance(0.5) {
                format!(", mask: ({rm}[:, None] < n) & ({rn}[None, :] < n)")
            } else {
                String::new()
            };
            let v = if c.d == D::F32 {
                acc.clone()
            } else {
                format!("({acc} as {})", c.d.name())
            };
            out.push(format!(
                "{pad}store(c + ({rm}[:, None] * {nt} + {rn}[None, :]), {v}{mask});"
            ));
            self.stmts += 1;
        }
    }

    /// The store every program ends with: unconditional (or masked by a run-time size) to a
    /// parameter nothing reads, at offsets in range, so no compiler may delete it.
    fn final_store(&mut self, out: &mut Vec<String>) {
        let d = self.out;
        let top: Vec<Var> = self.scopes[0].clone();
        let (ps, v) = if !top.is_empty() && self.rng.chance(0.6) {
            let v = self.rng.pick(&top);
            let e = Self::cast(
                Ex {
                    t: v.name,
                    d: v.d,
                    s: v.s.clone(),
                    k: v.k,
                },
                d,
            );
            (v.s, e)
        } else {
            let ps = self.rng.pick(&self.palette());
            let e = self.expr(d, &ps, 2, false);
            (ps, e)
        };
        let offs = match ps.as_slice() {
            [] => "program_id(0)".to_string(),
            [m] => format!("(program_id(0) * {m} + range({m}))"),
            [r, c] => format!(
                "(program_id(0) * {} + range({r})[:, None] * {c} + range({c})[None, :])",
                r * c
            ),
            _ => unreachable!("tiles have at most 2 dimensions here"),
        };
        if self.rng.chance(0.4) {
            out.push(format!(
                "    store(out + {offs}, {}, mask: ({offs} < n));",
                v.t
            ));
        } else {
            out.push(format!("    store(out + {offs}, {});", v.t));
        }
    }
}

// ---- running things on a budget -----------------------------------------------------------

const JOB_THREAD: &str = "fuzz-valid-job";

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Job threads' panics are expected (and reported): the hook records them instead of printing
/// them. Other threads keep the hook they had.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(JOB_THREAD) {
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    s.to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "(a panic without a message)".to_string()
                };
                let at = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

static RUNNING_JOBS: AtomicUsize = AtomicUsize::new(0);
/// Numbers the `ptxas` inputs (a job past its budget may still be writing its own).
#[cfg(feature = "nvptx")]
static JOB_NAMES: AtomicUsize = AtomicUsize::new(0);

enum Outcome<T> {
    Done(T),
    Panicked(String),
    TimedOut,
}

/// Runs `f` on a fresh thread and waits up to `budget` (a job past it keeps running, detached).
fn limited<T: Send + 'static>(
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> (Outcome<T>, Duration) {
    install_hook();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    RUNNING_JOBS.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name(JOB_THREAD.into())
        .stack_size(stack)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "(unknown panic)".into())
            });
            RUNNING_JOBS.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        RUNNING_JOBS.fetch_sub(1, Ordering::SeqCst);
        return (
            Outcome::Panicked(format!("could not start a thread: {e}")),
            start.elapsed(),
        );
    }
    let r = match rx.recv_timeout(PER_COMPILATION_BUDGET) {
        Ok(Ok(v)) => Outcome::Done(v),
        Ok(Err(m)) => Outcome::Panicked(m),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Outcome::TimedOut,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Outcome::Panicked("the job thread died".into())
        }
    };
    (r, start.elapsed())
}

const COMPILE_STACK: usize = 8 << 20;

// ---- checks -------------------------------------------------------------------------------

/// What one check found wrong: a kind (for grouping; numbers and names normalised away) and
/// the details.
#[derive(Clone, Debug)]
struct Problem {
    kind: String,
    detail: String,
}

fn problem(kind: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem {
        kind: kind.into(),
        detail: detail.into(),
    }
}

/// A message's first line with numbers, quoted names and paths normalised, for grouping.
fn normalise(msg: &str) -> String {
    let line = msg
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    // LLVM's messages come quoted, with escaped newlines.
    let line = line.split("\\n").next().unwrap_or(line);
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quote = false;
    while let Some(c) = chars.next() {
        if in_quote {
            if c == '\'' || c == '`' {
                in_quote = false;
                out.push(c);
            }
            continue;
        }
        if (c == '\'' || c == '`') && out.chars().last().is_none_or(|p| " (\"".contains(p)) {
            in_quote = true;
            out.push(c);
            out.push('_');
            continue;
        }
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                chars.next();
            }
            out.push('N');
            continue;
        }
        out.push(c);
    }
    out.chars().take(140).collect()
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n... ({} more bytes)", &s[..end], s.len() - end)
}

fn accepted(e: &BackendError) -> bool {
    ACCEPTED_ERRORS.iter().any(|a| e.message.contains(a))
}

fn check_ir(text: &str) -> Result<Kernel, Problem> {
    let src = Source::new("fuzz.kiln", text);
    let (r, _) = limited(COMPILE_STACK, move || compile_to_ir(&src, &Defines::new()));
    match r {
        Outcome::Done(Ok(mut ks)) if ks.len() == 1 => Ok(ks.remove(0)),
        Outcome::Done(Ok(ks)) => Err(problem("ir: wrong kernel count", format!("{}", ks.len()))),
        Outcome::Done(Err(e)) => {
            let msg = e.to_string();
            // Skip the `file:line:col: error:` prefix for the kind.
            let first = msg.lines().next().unwrap_or("");
            let what = first.split("error: ").nth(1).unwrap_or(first);
            Err(problem(format!("ir-error: {}", normalise(what)), msg))
        }
        Outcome::Panicked(m) => Err(problem(format!("ir-panic: {}", normalise(&m)), m)),
        Outcome::TimedOut => Err(problem("ir-timeout", "compile_to_ir ran past the budget")),
    }
}

/// PTX compile and ptxas times of one class of programs: count, total seconds, most seconds,
/// and the seed and configuration of the slowest.
type PtxTimes = (usize, f64, f64, u64, String);

/// What a Cranelift compilation gave.
enum CpuResult {
    Compiled(Box<CpuKernel>, Duration),
    Rejected(String),
}

fn check_cpu(k: &Arc<Kernel>, opts: CpuOptions) -> Result<CpuResult, Problem> {
    let k = k.clone();
    let (r, took) = limited(COMPILE_STACK, move || compile_with(&k, opts));
    match r {
        Outcome::Done(Ok(c)) => Ok(CpuResult::Compiled(Box::new(c), took)),
        Outcome::Done(Err(e)) if accepted(&e) => Ok(CpuResult::Rejected(normalise(&e.message))),
        Outcome::Done(Err(e)) => Err(problem(
            format!("cranelift-error: {}", normalise(&e.message)),
            e.to_string(),
        )),
        Outcome::Panicked(m) => Err(problem(format!("cranelift-panic: {}", normalise(&m)), m)),
        Outcome::TimedOut => Err(problem(
            "cranelift-timeout",
            format!("compile_with ran past {PER_COMPILATION_BUDGET:?}"),
        )),
    }
}

/// Runs programs 0 and 1 of a grid of 2 on bounds-checked buffers; returns whether an access
/// was out of bounds (skipped by the checks: not a failure).
fn run_cpu(k: CpuKernel, seed: u64) -> Result<bool, Problem> {
    let mut rng = Rng(seed ^ 0x0005_eed0_fa11);
    let mut buffers: Vec<Vec<u64>> = vec![];
    let mut args = vec![];
    let mut bounds = vec![];
    for p in k.params() {
        match p.kind {
            ParamKind::Ptr { pointee, .. } => {
                let bytes = 16 << 10;
                let words: Vec<u64> = (0..bytes / 8)
                    .map(|_| random_words(&mut rng, pointee))
                    .collect();
                buffers.push(words);
                args.push(buffers.last().unwrap().as_ptr() as u64);
                bounds.push(bytes as u64);
            }
            ParamKind::Scalar(d) => {
                let size = p.name == "n" || p.name == "n64";
                let v = match d {
                    DType::I32 if size => 1 + rng.below(40) as u64,
                    DType::I64 if size => 1 + rng.below(40) as u64,
                    DType::I32 => rng.pick(&[0i32, 1, -1, 7, i32::MIN, i32::MAX, 16]) as u32 as u64,
                    DType::I64 => rng.pick(&[0i64, -1, i64::MIN, i64::MAX, 1 << 40, 3]) as u64,
                    _ => rng
                        .pick(&[0.0f32, -0.0, 1.5, f32::NAN, f32::INFINITY, -1e30, -2.0])
                        .to_bits() as u64,
                };
                args.push(v);
                bounds.push(0);
            }
        }
    }
    let stack = (k.frame_bytes() as usize).saturating_add(16 << 20);
    let (r, _) = limited(stack, move || {
        let mut faulted = false;
        for pid in 0..2 {
            // SAFETY: one argument per parameter; every pointer addresses a live buffer of
            // `bounds` bytes (moved into this closure) and the kernel checks every access
            // against them; the thread has the frame's stack.
            let fault = unsafe { k.run_program(&args, &bounds, [pid, 0, 0], [2, 1, 1]) };
            match fault {
                Ok(f) => faulted |= f.is_some(),
                Err(e) => return Err(e.to_string()),
            }
        }
        drop(buffers);
        Ok(faulted)
    });
    match r {
        Outcome::Done(Ok(f)) => Ok(f),
        Outcome::Done(Err(e)) => Err(problem(format!("cpu-run-error: {}", normalise(&e)), e)),
        Outcome::Panicked(m) => Err(problem(format!("cpu-run-panic: {}", normalise(&m)), m)),
        Outcome::TimedOut => Err(problem(
            "cpu-run-timeout",
            "two programs ran past the budget",
        )),
    }
}

/// Eight bytes of a buffer of `d`: small integers (so gathers sometimes land in bounds), or
/// floats in [-4, 4) with a few specials.
fn random_words(rng: &mut Rng, d: DType) -> u64 {
    let mut w = 0u64;
    match d {
        DType::I32 => {
            for i in 0..2 {
                w |= (rng.below(64) as u64) << (32 * i);
            }
        }
        DType::I64 => w = rng.below(64) as u64,
        DType::F32 => {
            for i in 0..2 {
                w |= u64::from(random_f32(rng).to_bits()) << (32 * i);
            }
        }
        DType::F16 | DType::Bf16 => {
            for i in 0..4 {
                let f = random_f32(rng);
                let bits = if d == DType::F16 {
                    half::f16::from_f32(f).to_bits()
                } else {
                    half::bf16::from_f32(f).to_bits()
                };
                w |= u64::from(bits) << (16 * i);
            }
        }
        DType::Bool => w = rng.next() & 0x0101_0101_0101_0101,
    }
    w
}

fn random_f32(rng: &mut Rng) -> f32 {
    if rng.chance(0.02) {
        return rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
    }
    (rng.below(1 << 16) as f32) / 8192.0 - 4.0
}

/// The entry's body with declarations, labels and braces dropped.
#[cfg(feature = "nvptx")]
fn entry_instructions<'a>(ptx: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let at = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[at..];
    let open = rest.find("\n{")? + 2;
    let body = &rest[open..];
    let end = body.rfind('}').unwrap_or(body.len());
    Some(
        body[..end]
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with('.')
                    && !l.starts_with("//")
                    && !l.ends_with(':')
                    && *l != "{"
                    && *l != "}"
            })
            .collect(),
    )
}

/// Compiles to PTX with `opts` and assembles it: Ok(None) if it compiled and assembled,
/// Ok(Some(message)) if the backend refused it clearly.
#[cfg(feature = "nvptx")]
fn check_ptx(
    k: &Arc<Kernel>,
    opts: PtxOptions,
    ptxas: &std::path::Path,
    job: &str,
    times: &mut [Duration; 2],
) -> Result<Option<String>, Problem> {
    let kk = k.clone();
    let (r, took) = limited(COMPILE_STACK, move || compile_ptx(&kk, &opts));
    times[0] = took;
    let p = match r {
        Outcome::Done(Ok(p)) => p,
        Outcome::Done(Err(e)) if accepted(&e) => return Ok(Some(normalise(&e.message))),
        Outcome::Done(Err(e)) => {
            return Err(problem(
                format!("nvptx-error: {}", normalise(&e.message)),
                e.to_string(),
            ))
        }
        Outcome::Panicked(m) => return Err(problem(format!("nvptx-panic: {}", normalise(&m)), m)),
        Outcome::TimedOut => {
            return Err(problem(
                "nvptx-timeout",
                format!("compile_ptx ran past {PER_COMPILATION_BUDGET:?}"),
            ))
        }
    };
    let Some(body) = entry_instructions(&p.ptx, &k.name) else {
        return Err(problem("ptx-no-entry", truncate(&p.ptx, 4000)));
    };
    if body == ["ret;"] {
        return Err(problem("ptx-ret-only", truncate(&p.ptx, 4000)));
    }
    if !body.iter().any(|l| {
        ["st.global", "red.global", "atom.global"]
            .iter()
            .any(|i| l.contains(i))
    }) {
        return Err(problem("ptx-no-global-store", truncate(&p.ptx, 4000)));
    }
    let ptx = p.ptx;
    let arch = opts.arch.name();
    let name = job.to_string();
    let ptxas = ptxas.to_path_buf();
    let (r, took) = limited(COMPILE_STACK, move || {
        let stats = crate::nvptx_ptxas::assemble(&ptxas, &ptx, arch, &name);
        // The helper leaves its files behind; thousands of them add up.
        let dir = std::env::temp_dir().join(format!("kiln-ptxas-{}", std::process::id()));
        let _ = std::fs::remove_file(dir.join(format!("{name}-{arch}.ptx")));
        let _ = std::fs::remove_file(dir.join(format!("{name}-{arch}.cubin")));
        stats
    });
    times[1] = took;
    match r {
        Outcome::Done(_) => Ok(None),
        Outcome::Panicked(m) => {
            // The message is ptxas's output followed by the PTX: keep the output.
            let cut = m.find("\n//\n// Generated by LLVM").unwrap_or(m.len());
            let out = m[..cut].to_string();
            let first_error = out
                .lines()
                .find(|l| l.contains("error") || l.contains("fatal"))
                .map(|l| l.rsplit(" : ").next().unwrap_or(l).trim().to_string())
                .unwrap_or_else(|| out.lines().next().unwrap_or("").to_string());
            Err(problem(
                format!("ptxas: {}", normalise(&first_error)),
                truncate(&out, 4000),
            ))
        }
        Outcome::TimedOut => Err(problem("ptxas-timeout", "ptxas ran past the budget")),
    }
}

// ---- configurations -----------------------------------------------------------------------

#[cfg(feature = "nvptx")]
fn gpu_configs(rng: &mut Rng, feat: &Features, n: usize) -> Vec<PtxOptions> {
    let mut out: Vec<PtxOptions> = vec![];
    for _ in 0..n * 4 {
        if out.len() == n {
            break;
        }
        let arch = if feat.dots > 0 && rng.chance(0.4) {
            Arch::Sm90a
        } else {
            rng.pick(&[Arch::Sm80, Arch::Sm90, Arch::Sm90a])
        };
        // Now and then, stage and warp counts no one should ask for: a clear error or PTX,
        // never a panic or a hang.
        let num_stages = if rng.chance(0.03) {
            rng.pick(&[0, 4, 8, 64, 1 << 16, u32::MAX])
        } else {
            rng.pick(&[1, 2, 3])
        };
        let num_warps = if rng.chance(0.01) {
            rng.pick(&[0, 3, 64, u32::MAX])
        } else {
            rng.pick(&[1, 2, 4, 8, 16, 32])
        };
        let divisible_by_16 = match rng.below(10) {
            0..=3 => !0,
            4..=6 => 0,
            _ => rng.next(),
        };
        let o = PtxOptions {
            arch,
            num_warps,
            divisible_by_16,
            num_stages,
            bounds_checks: rng.chance(0.15),
        };
        if !out.contains(&o) {
            out.push(o);
        }
    }
    out
}

/// Elements of the program's largest tile per thread of the configuration (at least 1).
#[cfg(feature = "nvptx")]
fn elems_per_thread(feat: &Features, o: &PtxOptions) -> u64 {
    (feat.max_elems / (32 * u64::from(o.num_warps.max(1)))).max(1)
}

#[cfg(feature = "nvptx")]
fn known_defects(feat: &Features, o: &PtxOptions) -> Vec<&'static str> {
    KNOWN_DEFECTS
        .iter()
        .filter(|d| (d.matches)(feat, o))
        .map(|d| d.name)
        .collect()
}

/// What a check was run on, to run it again while shrinking.
#[derive(Clone, Debug)]
enum Target {
    Ir,
    Cpu(CpuOptions),
    #[cfg(feature = "nvptx")]
    Ptx(PtxOptions),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Ir => "compile_to_ir".into(),
            Target::Cpu(o) => format!("cranelift compile_with {o:?}"),
            #[cfg(feature = "nvptx")]
            Target::Ptx(o) => format!("compile_ptx {o:?} + ptxas -arch={}", o.arch.name()),
        }
    }
}

// ---- the campaign -------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Failure {
    seed: u64,
    program: String,
    target: String,
    target_kind: Option<Target>,
    problem: Problem,
    known: Vec<&'static str>,
    shrunk: Option<String>,
}

/// The failures of one kind: how many, how many no known defect explains, which known defects
/// explain the others, and a few examples.
#[derive(Default)]
struct Kind {
    count: usize,
    unexplained: usize,
    known: Vec<&'static str>,
    examples: Vec<Failure>,
}

#[derive(Default)]
struct Report {
    programs: usize,
    ir_ok: usize,
    cpu_compiles: usize,
    cpu_runs: usize,
    cpu_runs_with_fault: usize,
    ptx_compiles: usize,
    ptxas_runs: usize,
    skipped_known: BTreeMap<&'static str, usize>,
    rejected: BTreeMap<String, usize>,
    failures: BTreeMap<String, Kind>,
    slowest_cpu: (Duration, u64),
    shrink_time: Duration,
    /// PTX compile and ptxas times by bounds checks and log2 of the largest tile's elements
    /// per thread: count, total seconds, most seconds.
    ptx_times: BTreeMap<(bool, u32), PtxTimes>,
    /// The slowest PTX configurations: seconds (compile + ptxas), seed, configuration.
    slowest_ptx: Vec<(f64, u64, String)>,
}

impl Report {
    #[cfg(feature = "nvptx")]
    fn time_ptx(&mut self, feat: &Features, o: &PtxOptions, seed: u64, times: [Duration; 2]) {
        let t = (times[0] + times[1]).as_secs_f64();
        let e = self
            .ptx_times
            .entry((o.bounds_checks, elems_per_thread(feat, o).ilog2()))
            .or_default();
        let cfg = format!(
            "{o:?} (compile {:.1} s, ptxas {:.1} s; largest tile {} elements)",
            times[0].as_secs_f64(),
            times[1].as_secs_f64(),
            feat.max_elems
        );
        e.0 += 1;
        e.1 += t;
        if t > e.2 {
            (e.2, e.3, e.4) = (t, seed, cfg.clone());
        }
        self.slowest_ptx.push((t, seed, cfg));
        self.keep_slowest();
    }

    fn keep_slowest(&mut self) {
        self.slowest_ptx.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.slowest_ptx.truncate(8);
    }

    fn fail(&mut self, f: Failure) {
        let e = self.failures.entry(f.problem.kind.clone()).or_default();
        e.count += 1;
        e.unexplained += usize::from(f.known.is_empty());
        for k in &f.known {
            if !e.known.contains(k) {
                e.known.push(k);
            }
        }
        e.add_example(f);
    }

    fn merge(&mut self, o: Report) {
        self.programs += o.programs;
        self.ir_ok += o.ir_ok;
        self.cpu_compiles += o.cpu_compiles;
        self.cpu_runs += o.cpu_runs;
        self.cpu_runs_with_fault += o.cpu_runs_with_fault;
        self.ptx_compiles += o.ptx_compiles;
        self.ptxas_runs += o.ptxas_runs;
        for (k, v) in o.skipped_known {
            *self.skipped_known.entry(k).or_default() += v;
        }
        for (k, v) in o.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
        for (kind, o) in o.failures {
            let e = self.failures.entry(kind).or_default();
            e.count += o.count;
            e.unexplained += o.unexplained;
            for k in o.known {
                if !e.known.contains(&k) {
                    e.known.push(k);
                }
            }
            for f in o.examples {
                e.add_example(f);
            }
        }
        if o.slowest_cpu.0 > self.slowest_cpu.0 {
            self.slowest_cpu = o.slowest_cpu;
        }
        for (k, (n, t, m, seed, cfg)) in o.ptx_times {
            let e = self.ptx_times.entry(k).or_default();
            e.0 += n;
            e.1 += t;
            if m > e.2 {
                (e.2, e.3, e.4) = (m, seed, cfg);
            }
        }
        self.slowest_ptx.extend(o.slowest_ptx);
        self.keep_slowest();
        self.shrink_time += o.shrink_time;
    }

    /// Failures that no known defect explains.
    fn unexplained(&self) -> usize {
        self.failures.values().map(|k| k.unexplained).sum()
    }

    fn summary(&self, tag: &str, elapsed: Duration) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fuzz_valid {tag}: {} programs ({} checked), {} Cranelift compiles, {} CPU runs \
             ({} with a skipped out-of-bounds access), {} PTX compiles, {} ptxas runs, in {:.0} s \
             (slowest Cranelift compile {:.1} s, seed {:#x}; {:.0} s shrinking)",
            self.programs,
            self.ir_ok,
            self.cpu_compiles,
            self.cpu_runs,
            self.cpu_runs_with_fault,
            self.ptx_compiles,
            self.ptxas_runs,
            elapsed.as_secs_f64(),
            self.slowest_cpu.0.as_secs_f64(),
            self.slowest_cpu.1,
            self.shrink_time.as_secs_f64(),
        );
        if !self.ptx_times.is_empty() {
            let _ = writeln!(
                s,
                "PTX compile + ptxas seconds by elements per thread of the largest tile:"
            );
            for ((checked, k), (n, t, m, seed, _)) in &self.ptx_times {
                let checked = if *checked { "checked" } else { "" };
                let _ = writeln!(
                    s,
                    "  {:>8} {checked:>7}  {n:>6} compiles, mean {:>5.2} s, most {:>5.1} s (seed {seed:#x})",
                    format!("2^{k}"),
                    t / *n as f64,
                    m
                );
            }
            let _ = writeln!(s, "slowest PTX configurations:");
            for (t, seed, cfg) in &self.slowest_ptx {
                let _ = writeln!(s, "  {t:>5.1} s  seed {seed:#x}  {cfg}");
            }
        }
        if !self.skipped_known.is_empty() {
            let _ = writeln!(s, "configurations skipped as known defects:");
            for (k, n) in &self.skipped_known {
                let _ = writeln!(s, "  {n:>6}  {k}");
            }
        }
        if !self.rejected.is_empty() {
            let _ = writeln!(s, "refused with a clear error (accepted):");
            for (k, n) in &self.rejected {
                let _ = writeln!(s, "  {n:>6}  {k}");
            }
        }
        if self.failures.is_empty() {
            let _ = writeln!(s, "no failures");
        } else {
            let _ = writeln!(s, "failures by kind:");
            for (k, kind) in &self.failures {
                let mut label = vec![];
                if kind.unexplained > 0 {
                    label.push(format!("{} NEW", kind.unexplained));
                }
                if !kind.known.is_empty() {
                    label.push(format!("known: {}", kind.known.join(", ")));
                }
                let _ = writeln!(s, "  {:>6}  {k}  [{}]", kind.count, label.join("; "));
            }
        }
        s
    }

    fn details(&self) -> String {
        let mut s = String::new();
        for (k, kind) in &self.failures {
            let n = kind.count;
            for (i, f) in kind.examples.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "\n======== FAILURE {k} ({} of {n}; known: {:?})\nseed: {:#x}\nconfiguration: {}\nwhat went wrong:\n{}\nprogram:\n{}",
                    i + 1,
                    f.known,
                    f.seed,
                    f.target,
                    truncate(&f.problem.detail, 3000),
                    f.program
                );
                if let Some(p) = &f.shrunk {
                    let _ = writeln!(s, "shrunk program (same failure, same configuration):\n{p}");
                }
            }
        }
        s
    }
}

impl Kind {
    /// Keeps the first three, but one that no known defect explains, if there is one.
    fn add_example(&mut self, f: Failure) {
        if self.examples.len() < 3 {
            self.examples.push(f);
        } else if f.known.is_empty() && self.examples.iter().all(|e| !e.known.is_empty()) {
            self.examples[2] = f;
        }
    }
}

struct Campaign {
    tag: &'static str,
    cases: usize,
    seed: u64,
    threads: usize,
    deadline: Option<Instant>,
    #[cfg_attr(not(feature = "nvptx"), allow(dead_code))]
    skip_known: bool,
    shrink: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn run_campaign(c: &Campaign) -> (Report, Duration) {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let report = Mutex::new(Report::default());
    #[cfg(feature = "nvptx")]
    let ptxas = crate::nvptx_ptxas::require();
    std::thread::scope(|scope| {
        for worker in 0..c.threads {
            let next = &next;
            let report = &report;
            #[cfg(feature = "nvptx")]
            let ptxas = ptxas.clone();
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= c.cases || c.deadline.is_some_and(|d| Instant::now() > d) {
                    break;
                }
                // Jobs left running past their budget: let them finish before piling up more.
                let wait = Instant::now();
                while RUNNING_JOBS.load(Ordering::SeqCst) > c.threads
                    && wait.elapsed() < Duration::from_secs(300)
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                let seed = c.seed.wrapping_add(i as u64);
                #[cfg(feature = "nvptx")]
                let r = fuzz_one(c, worker, seed, ptxas.as_deref());
                #[cfg(not(feature = "nvptx"))]
                let r = fuzz_one(c, worker, seed);
                let mut all = report.lock().unwrap();
                all.merge(r);
                if all.programs % 100 == 0 {
                    eprintln!(
                        "fuzz_valid {}: {} programs, {} failures, {:.0} s",
                        c.tag,
                        all.programs,
                        all.failures.values().map(|f| f.count).sum::<usize>(),
                        start.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    (report.into_inner().unwrap(), start.elapsed())
}

/// Writes what is being compiled where it survives the process dying.
fn note_current(worker: usize, seed: u64, what: &str, text: &str) {
    let path = std::env::temp_dir().join(format!(
        "kiln-fuzz-valid-{}-{worker}.kiln",
        std::process::id()
    ));
    let _ = std::fs::write(path, format!("// seed {seed:#x}\n// {what}\n{text}"));
}

fn fuzz_one(
    c: &Campaign,
    worker: usize,
    seed: u64,
    #[cfg(feature = "nvptx")] ptxas: Option<&std::path::Path>,
) -> Report {
    let mut rep = Report {
        programs: 1,
        ..Report::default()
    };
    let prog = generate(seed);
    if std::env::var("KILN_FUZZ_VALID_PRINT").as_deref() == Ok("1") {
        eprintln!("// seed {seed:#x}\n{}", prog.text);
    }
    let failure = |target: Target, p: Problem, known: Vec<&'static str>| Failure {
        seed,
        program: prog.text.clone(),
        target: target.describe(),
        target_kind: Some(target),
        problem: p,
        known,
        shrunk: None,
    };
    note_current(worker, seed, "compile_to_ir", &prog.text);
    let k = match check_ir(&prog.text) {
        Ok(k) => Arc::new(k),
        Err(p) => {
            rep.fail(failure(Target::Ir, p, vec![]));
            return finish(c, rep);
        }
    };
    rep.ir_ok += 1;

    let mut cfg_rng = Rng(seed ^ 0x00c0_ffee_d00d);
    let mut cpu_opts = vec![CpuOptions::default()];
    if cfg_rng.chance(0.25) {
        cpu_opts.push(CpuOptions {
            bounds_checks: false,
        });
    }
    for opts in cpu_opts {
        note_current(worker, seed, &format!("cranelift {opts:?}"), &prog.text);
        rep.cpu_compiles += 1;
        match check_cpu(&k, opts) {
            Ok(CpuResult::Compiled(ck, took)) => {
                if took > rep.slowest_cpu.0 {
                    rep.slowest_cpu = (took, seed);
                }
                // Run the checked build, when its work is small.
                let cheap = (prog.feat.max_elems <= 1 << 16
                    || (prog.feat.loops == 0 && prog.feat.max_elems <= 1 << 20))
                    && ck.frame_bytes() <= 512 << 20;
                if opts.bounds_checks && cheap {
                    note_current(worker, seed, "cpu run", &prog.text);
                    rep.cpu_runs += 1;
                    match run_cpu(*ck, seed) {
                        Ok(faulted) => rep.cpu_runs_with_fault += usize::from(faulted),
                        Err(p) => rep.fail(Failure {
                            target: format!(
                                "cpu run (seed {seed:#x}) of {}",
                                Target::Cpu(opts).describe()
                            ),
                            target_kind: None,
                            ..failure(Target::Cpu(opts), p, vec![])
                        }),
                    }
                }
            }
            Ok(CpuResult::Rejected(m)) => {
                *rep.rejected.entry(format!("cranelift: {m}")).or_default() += 1
            }
            Err(p) => rep.fail(failure(Target::Cpu(opts), p, vec![])),
        }
    }

    #[cfg(feature = "nvptx")]
    for opts in gpu_configs(&mut cfg_rng, &prog.feat, GPU_CONFIGS) {
        let known = known_defects(&prog.feat, &opts);
        if c.skip_known && !known.is_empty() {
            for k in known {
                *rep.skipped_known.entry(k).or_default() += 1;
            }
            continue;
        }
        let Some(ptxas) = ptxas else { continue };
        note_current(worker, seed, &format!("{opts:?}"), &prog.text);
        rep.ptx_compiles += 1;
        let job = format!(
            "fuzz-valid-{}-{}",
            c.tag,
            JOB_NAMES.fetch_add(1, Ordering::SeqCst)
        );
        let mut times = [Duration::ZERO; 2];
        let r = check_ptx(&k, opts, ptxas, &job, &mut times);
        rep.time_ptx(&prog.feat, &opts, seed, times);
        match r {
            Ok(None) => rep.ptxas_runs += 1,
            Ok(Some(m)) => *rep.rejected.entry(format!("nvptx: {m}")).or_default() += 1,
            Err(p) => rep.fail(failure(Target::Ptx(opts), p, known)),
        }
    }
    finish(c, rep)
}

/// Shrinks each failure of the report (one program: at most a few) when asked to.
fn finish(c: &Campaign, mut rep: Report) -> Report {
    if !c.shrink {
        return rep;
    }
    let start = Instant::now();
    for (kind, stats) in rep.failures.iter_mut() {
        for f in stats.examples.iter_mut() {
            let Some(target) = f.target_kind.clone() else {
                continue;
            };
            if kind.contains("timeout") || !first_of_kind(kind) {
                continue;
            }
            f.shrunk = Some(shrink(&f.program, &target, kind));
        }
    }
    rep.shrink_time += start.elapsed();
    rep
}

/// Whether this is the first failure of its kind in the process (only those are shrunk).
fn first_of_kind(kind: &str) -> bool {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap();
    if seen.iter().any(|k| k == kind) {
        return false;
    }
    seen.push(kind.to_string());
    true
}

// ---- shrinking ----------------------------------------------------------------------------

/// The problem `target` has with `text` (None: it passes, or fails differently before
/// reaching the target).
fn problem_of(text: &str, target: &Target) -> Option<Problem> {
    let k = match check_ir(text) {
        Ok(k) => Arc::new(k),
        Err(p) => return matches!(target, Target::Ir).then_some(p),
    };
    match target {
        Target::Ir => None,
        Target::Cpu(o) => check_cpu(&k, *o).err(),
        #[cfg(feature = "nvptx")]
        Target::Ptx(o) => {
            let ptxas = crate::nvptx_ptxas::find()?;
            let job = format!(
                "fuzz-valid-shrink-{}",
                JOB_NAMES.fetch_add(1, Ordering::SeqCst)
            );
            check_ptx(&k, *o, &ptxas, &job, &mut [Duration::ZERO; 2]).err()
        }
    }
}

fn problem_kind(text: &str, target: &Target) -> Option<String> {
    problem_of(text, target).map(|p| p.kind)
}

/// Whether the kernel body still has an unconditional store (every program must store).
fn stores(lines: &[String]) -> bool {
    let mut in_kernel = false;
    lines.iter().any(|l| {
        if l.starts_with("kernel ") {
            in_kernel = true;
        }
        in_kernel && l.starts_with("    store(out + ")
    })
}

/// The index of the line closing the block that line `i` opens.
fn block_end(lines: &[String], i: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (j, l) in lines.iter().enumerate().skip(i) {
        for ch in l.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        if depth == 0 {
            return Some(j);
        }
    }
    None
}

/// Deletes statements (and whole blocks, and block headers keeping their bodies) while the
/// program keeps failing the same way.
fn shrink(text: &str, target: &Target, kind: &str) -> String {
    let start = Instant::now();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut changed = true;
    while changed && start.elapsed() < SHRINK_BUDGET {
        changed = false;
        let mut i = lines.len();
        while i > 0 && start.elapsed() < SHRINK_BUDGET {
            i -= 1;
            let l = lines[i].trim_start();
            if l.starts_with("kernel ") || l.starts_with('}') || l.is_empty() {
                continue;
            }
            let mut trials: Vec<Vec<String>> = vec![];
            if l.ends_with('{') {
                let Some(end) = block_end(&lines, i) else {
                    continue;
                };
                let mut t = lines.clone();
                t.drain(i..=end);
                trials.push(t);
                // The body without its `for`/`if` (an `if` with an `else` keeps neither).
                if !l.starts_with("fn ") && !lines[i..end].iter().any(|x| x.trim() == "} else {") {
                    let mut t = lines.clone();
                    t.remove(end);
                    t.remove(i);
                    trials.push(t);
                }
            } else {
                let mut t = lines.clone();
                t.remove(i);
                trials.push(t);
            }
            for t in trials {
                if !stores(&t) {
                    continue;
                }
                if problem_kind(&t.join("\n"), target).as_deref() == Some(kind) {
                    lines = t;
                    changed = true;
                    i = i.min(lines.len());
                    break;
                }
            }
        }
    }
    lines.retain(|l| !l.trim().is_empty());
    lines.join("\n")
}

// ---- the tests ----------------------------------------------------------------------------

fn threads() -> usize {
    env_u64("KILN_FUZZ_VALID_THREADS")
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1)
}

/// The generator's programs are valid, and every one compiles through both backends (bar the
/// configurations of [`KNOWN_DEFECTS`]).
#[test]
fn valid_programs_compile_through_both_backends() {
    let c = Campaign {
        tag: "ci",
        cases: env_u64("KILN_FUZZ_CASES").map_or(CI_CASES, |n| n as usize),
        seed: env_u64("KILN_FUZZ_VALID_SEED").unwrap_or(BASE_SEED),
        threads: threads(),
        deadline: None,
        skip_known: true,
        shrink: false,
    };
    let (report, elapsed) = run_campaign(&c);
    let summary = report.summary(c.tag, elapsed);
    println!("{summary}");
    assert!(report.failures.is_empty(), "{summary}{}", report.details());
}

/// Thousands of programs, known defects included; prints a summary of what it ran and found.
#[test]
#[ignore = "long: run with `cargo test -- --ignored` (KILN_FUZZ_VALID_CASES, KILN_FUZZ_VALID_SECONDS)"]
fn valid_programs_long_run() {
    let c = Campaign {
        tag: "long",
        cases: env_u64("KILN_FUZZ_VALID_CASES").map_or(LONG_CASES, |n| n as usize),
        seed: env_u64("KILN_FUZZ_VALID_SEED").unwrap_or(BASE_SEED ^ 0x1000_0000),
        threads: threads(),
        deadline: env_u64("KILN_FUZZ_VALID_SECONDS")
            .map(|s| Instant::now() + Duration::from_secs(s)),
        skip_known: false,
        shrink: true,
    };
    let (report, elapsed) = run_campaign(&c);
    let summary = report.summary(c.tag, elapsed);
    println!("{}\n{summary}", report.details());
    assert_eq!(
        report.unexplained(),
        0,
        "failures no known defect explains:\n{summary}"
    );
}

/// Reproduces one failure: `KILN_FUZZ_VALID_FILE=prog.kiln KILN_FUZZ_VALID_TARGET='sm_90a w16
/// s2 aligned' cargo test ... valid_program_from_file -- --ignored --nocapture` (target `ir`,
/// `cpu`, `cpu unchecked`, or an arch with `wN` warps, `sN` stages, `aligned` or `dMASK`
/// (hex), `checked`); prints what happens and how long it took. `KILN_FUZZ_VALID_FILE=seed:N`
/// takes the program of seed N.
#[test]
#[ignore = "a tool: reproduces one program (KILN_FUZZ_VALID_FILE, KILN_FUZZ_VALID_TARGET)"]
fn valid_program_from_file() {
    let path = std::env::var("KILN_FUZZ_VALID_FILE").expect("KILN_FUZZ_VALID_FILE");
    // `seed:N` generates the program of seed N instead.
    let text = match path.strip_prefix("seed:") {
        Some(seed) => {
            let seed = match seed.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).unwrap(),
                None => seed.parse().unwrap(),
            };
            let text = generate(seed).text;
            println!("{text}");
            text
        }
        None => std::fs::read_to_string(&path).unwrap(),
    };
    let spec = std::env::var("KILN_FUZZ_VALID_TARGET").unwrap_or_else(|_| "cpu".into());
    let words: Vec<&str> = spec.split_whitespace().collect();
    let target = match words.first().copied() {
        Some("ir") => Target::Ir,
        Some("cpu") => Target::Cpu(CpuOptions {
            bounds_checks: !words.contains(&"unchecked"),
        }),
        #[cfg(feature = "nvptx")]
        Some(arch) => {
            let mut o = PtxOptions::new(Arch::from_name(arch).expect("an arch"), 4);
            for w in &words[1..] {
                if let Some(n) = w.strip_prefix('w') {
                    o.num_warps = n.parse().unwrap();
                } else if let Some(n) = w.strip_prefix('s') {
                    o.num_stages = n.parse().unwrap();
                } else if let Some(m) = w.strip_prefix('d') {
                    o.divisible_by_16 = u64::from_str_radix(m, 16).unwrap();
                } else if *w == "aligned" {
                    o.divisible_by_16 = !0;
                } else if *w == "checked" {
                    o.bounds_checks = true;
                }
            }
            Target::Ptx(o)
        }
        #[cfg(not(feature = "nvptx"))]
        Some(other) => panic!("unknown target {other}"),
        None => panic!("empty KILN_FUZZ_VALID_TARGET"),
    };
    #[cfg(feature = "nvptx")]
    if let Target::Ptx(o) = &target {
        // Where the time goes.
        let k = Arc::new(check_ir(&text).unwrap_or_else(|p| panic!("{}", p.detail)));
        let (kk, oo) = (k.clone(), *o);
        if let (Outcome::Done(Ok(p)), took) = limited(COMPILE_STACK, move || compile_ptx(&kk, &oo))
        {
            let t = took.as_secs_f64();
            let path = std::env::temp_dir().join("kiln-fuzz-valid-one.ptx");
            std::fs::write(&path, &p.ptx).unwrap();
            println!(
                "compile_ptx alone: {t:.2} s, {} lines of PTX in {}",
                p.ptx.lines().count(),
                path.display()
            );
        }
    }
    let start = Instant::now();
    let p = problem_of(&text, &target);
    println!(
        "{}: {} in {:.2} s\n{}",
        target.describe(),
        p.as_ref().map_or("ok", |p| p.kind.as_str()),
        start.elapsed().as_secs_f64(),
        p.as_ref().map_or("", |p| p.detail.as_str())
    );
}

/// Generated programs check (a fast test of the generator alone).
#[test]
fn generated_programs_check() {
    let base = env_u64("KILN_FUZZ_VALID_SEED").unwrap_or(BASE_SEED) ^ 0x2000_0000;
    let mut errors = vec![];
    for i in 0..300 {
        let p = generate(base + i);
        if let Err(e) = compile_to_ir(&Source::new("fuzz.kiln", p.text.as_str()), &Defines::new()) {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            eprintln!(
                "KIND {}",
                normalise(first.split("error: ").nth(1).unwrap_or(&first))
            );
            errors.push(format!("seed {:#x}:\n{e}\n{}", base + i, p.text));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of 300 did not check:\n{}",
        errors.len(),
        errors
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The generator is deterministic, and its programs are well-formed text.
#[test]
fn generator_is_deterministic() {
    for seed in 0..50 {
        let a = generate(seed).text;
        assert_eq!(a, generate(seed).text);
        assert!(a.contains("kernel fz"), "{a}");
        assert!(
            stores(&a.lines().map(String::from).collect::<Vec<_>>()),
            "{a}"
        );
    }
}
