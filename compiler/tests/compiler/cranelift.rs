//! The Cranelift backend against plain-Rust references on random inputs.

use half::{bf16, f16};
use kiln_compiler::backend::cranelift::{compile_with, CpuKernel, CpuOptions};
use kiln_compiler::{compile_to_ir, Defines, Source};

fn kernel(src: &str, name: &str) -> CpuKernel {
    let ks = compile_to_ir(&Source::new("t.kiln", src), &Defines::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let k = ks
        .iter()
        .find(|k| k.name.starts_with(name))
        .unwrap_or_else(|| panic!("{:?}", ks.iter().map(|k| &k.name).collect::<Vec<_>>()));
    // These tests hand the kernels raw host pointers: the bounds checks have their own tests
    // (runtime and below), so the numerics here are those of the unchecked code.
    compile_with(k, UNCHECKED).unwrap_or_else(|e| panic!("{e}"))
}

const UNCHECKED: CpuOptions = CpuOptions {
    bounds_checks: false,
};

fn run(k: &CpuKernel, args: &[u64], grid: u32) {
    let bounds = vec![0; args.len()];
    for p in 0..grid {
        let fault = unsafe {
            k.run_program(args, &bounds, [p, 0, 0], [grid, 1, 1])
                .unwrap()
        };
        assert_eq!(fault, None);
    }
}

/// xorshift, never all zero.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
}

/// How a test kernel reads its input: contiguously (the four-lane path) or through a permuted
/// index `o ^ z` with `z == 0` at run time (a gather, so the scalar path), each over the same
/// elements.
#[derive(Clone, Copy, Debug)]
enum Path {
    Lanes,
    Scalar,
}

impl Path {
    const BOTH: [Path; 2] = [Path::Lanes, Path::Scalar];

    fn index(self) -> &'static str {
        match self {
            Path::Lanes => "o",
            Path::Scalar => "(o ^ z)",
        }
    }
}

/// `y[i] = f(x[i])` for `i < n`, 1024 elements per program, reading `x` along `path`; `f` is an
/// expression in `v`. Takes `(x, y, n, z)` with `z == 0`.
fn map_kernel(from: &str, to: &str, f: &str, path: Path) -> CpuKernel {
    let src = format!(
        "kernel c(x: *{from}, y: *mut {to}, n: i32, z: i32) {{ \
         let o = program_id(0) * 1024 + range(1024); let m = o < n; \
         let v = load(x + {}, mask: m); store(y + o, {f}, mask: m); }}",
        path.index()
    );
    let ks = compile_to_ir(&Source::new("t.kiln", &src), &Defines::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let clif = kiln_compiler::backend::cranelift::emit_clif(&ks[0], UNCHECKED).unwrap();
    assert_eq!(
        clif.contains("f32x4") || clif.contains("i32x4"),
        matches!(path, Path::Lanes),
        "{path:?} path expected for {src}"
    );
    kernel(&src, "c")
}

fn conv_kernel(from: &str, to: &str, path: Path) -> CpuKernel {
    map_kernel(from, to, &format!("v as {to}"), path)
}

fn run_map<X, Y>(k: &CpuKernel, x: &[X], y: &mut [Y]) {
    let n = x.len() as u32;
    run(
        k,
        &[x.as_ptr() as u64, y.as_mut_ptr() as u64, n as u64, 0],
        n.div_ceil(1024),
    );
}

#[test]
fn half_widening_all_bit_patterns() {
    for (ty, reference) in [
        (
            "bf16",
            (|b: u16| bf16::from_bits(b).to_f32()) as fn(u16) -> f32,
        ),
        ("f16", |b: u16| f16::from_bits(b).to_f32()),
    ] {
        for path in Path::BOTH {
            let k = conv_kernel(ty, "f32", path);
            let x: Vec<u16> = (0..=u16::MAX).collect();
            let mut y = vec![0f32; x.len()];
            run_map(&k, &x, &mut y);
            for (&b, &got) in x.iter().zip(&y) {
                let want = reference(b);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{ty} {path:?} {b:#06x}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn half_narrowing() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut xs: Vec<f32> = (0..200_000)
        .map(|_| f32::from_bits(rng.next() as u32))
        .collect();
    // Ties, subnormals, overflow edges, infinities, NaN.
    for b in 0..=u16::MAX {
        let f = f16::from_bits(b).to_f32();
        let bb = bf16::from_bits(b).to_f32();
        for d in [0, 1, 0x1000, 0x0fff, 0x1001, 0x8000, 0x7fff] {
            xs.push(f32::from_bits(f.to_bits().wrapping_add(d)));
            xs.push(f32::from_bits(bb.to_bits().wrapping_add(d)));
        }
    }
    xs.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65519.99,
        65520.0,
        f32::MAX,
        1e-8,
        -3e-8,
    ]);
    // Not a multiple of four: the last group of the last program is partly masked off.
    assert_ne!(xs.len() % 4, 0);
    for (ty, reference) in [
        (
            "bf16",
            (|x: f32| bf16::from_f32(x).to_bits()) as fn(f32) -> u16,
        ),
        ("f16", |x: f32| f16::from_f32(x).to_bits()),
    ] {
        for path in Path::BOTH {
            let k = conv_kernel("f32", ty, path);
            let mut y = vec![0u16; xs.len()];
            run_map(&k, &xs, &mut y);
            for (&x, &got) in xs.iter().zip(&y) {
                let want = reference(x);
                if x.is_nan() {
                    let g = if ty == "bf16" {
                        bf16::from_bits(got).is_nan()
                    } else {
                        f16::from_bits(got).is_nan()
                    };
                    assert!(g, "{ty} {path:?} NaN {x:e} -> {got:#06x}");
                } else {
                    assert_eq!(got, want, "{ty} {path:?} of {x:e} ({:#010x})", x.to_bits());
                }
            }
        }
    }
}

/// Distance from `got` to the exact `want` in units of `want`'s f32 ulp, or of `floor` where
/// that is larger.
fn ulps(got: f32, want: f64, floor: f32) -> f64 {
    if got.is_nan() || want.is_nan() {
        return if got.is_nan() && want.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if got.is_infinite() || want.abs() > f64::from(f32::MAX) {
        return if f64::from(got) == want || (want.abs() > f64::from(f32::MAX) && got.is_infinite())
        {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let w = want as f32;
    let ulp = (f64::from(f32::from_bits(w.abs().to_bits() + 1)) - f64::from(w.abs()))
        .max(f64::from(floor));
    (f64::from(got) - want).abs() / ulp
}

#[test]
fn exp_exp2_sigmoid_within_a_few_ulps() {
    // Every 997th bit pattern of [-128, 128] and specials; both signs.
    let mut xs: Vec<f32> = (0..0x4300_0000u32)
        .step_by(997)
        .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
        .collect();
    xs.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        88.72,
        88.73,
        -87.3,
        -103.9,
        -104.0,
    ]);
    type Ref = fn(f64) -> f64;
    // exp and exp2 are checked down to subnormal results; sigmoid computes 1 / (1 + e^-x), which
    // flushes results below the normal range (e^-x overflows), as the f32 formula does.
    let subnormal = f32::from_bits(1);
    // The bounds are in ulps; sigmoid rounds three times after exp.
    for (f, reference, floor, bound) in [
        ("exp(v)", f64::exp as Ref, subnormal, 2.0),
        ("exp2(v)", f64::exp2 as Ref, subnormal, 2.0),
        (
            "sigmoid(v)",
            (|x: f64| 1.0 / (1.0 + (-x).exp())) as Ref,
            f32::MIN_POSITIVE,
            3.0,
        ),
    ] {
        for path in Path::BOTH {
            let k = map_kernel("f32", "f32", f, path);
            let mut y = vec![0f32; xs.len()];
            run_map(&k, &xs, &mut y);
            let worst = xs
                .iter()
                .zip(&y)
                .map(|(&x, &got)| (ulps(got, reference(f64::from(x)), floor), x, got))
                .fold((0.0, 0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
            assert!(
                worst.0 <= bound,
                "{f} {path:?}: {} ulps at {:e} (got {:e})",
                worst.0,
                worst.1,
                worst.2
            );
        }
    }
}

#[test]
fn rmsnorm_matches_reference() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ops/kernels/rmsnorm.kiln"
    ))
    .unwrap();
    let k = kernel(&src, "rmsnorm_fwd");
    let (rows, n) = (64usize, 896usize);
    let mut rng = Rng(7);
    let x: Vec<bf16> = (0..rows * n)
        .map(|_| bf16::from_f32(rng.f32() * 3.0))
        .collect();
    let w: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.f32())).collect();
    let mut y = vec![bf16::ZERO; rows * n];
    let mut rstd = vec![0f32; rows];
    let eps = 1e-6f32;
    let args = [
        x.as_ptr() as u64,
        w.as_ptr() as u64,
        y.as_mut_ptr() as u64,
        rstd.as_mut_ptr() as u64,
        n as u64,
        eps.to_bits() as u64,
    ];
    run(&k, &args, rows as u32);
    for r in 0..rows {
        let xr = &x[r * n..(r + 1) * n];
        let ms: f64 = xr.iter().map(|v| (v.to_f64()).powi(2)).sum::<f64>() / n as f64;
        let rs = 1.0 / (ms + eps as f64).sqrt();
        assert!((rstd[r] as f64 - rs).abs() <= 1e-5 * rs, "rstd row {r}");
        for c in 0..n {
            let want = xr[c].to_f64() * rs * w[c].to_f64();
            let got = y[r * n + c].to_f64();
            assert!(
                (got - want).abs() <= 1e-2 * want.abs() + 1e-6,
                "y[{r},{c}] {got} vs {want}"
            );
        }
    }
}

#[test]
fn int_division_never_traps() {
    let k = kernel(
        "kernel d(a: *i32, b: *i32, q: *mut i32, r: *mut i32) { let o = range(8); \
         store(q + o, load(a + o) / load(b + o)); store(r + o, load(a + o) % load(b + o)); }",
        "d",
    );
    let a = [7, -7, i32::MIN, i32::MIN, 5, 0, 100, -9];
    let b = [2, 2, -1, 0, 0, 3, -7, 4];
    let (mut q, mut r) = ([0i32; 8], [0i32; 8]);
    run(
        &k,
        &[
            a.as_ptr() as u64,
            b.as_ptr() as u64,
            q.as_mut_ptr() as u64,
            r.as_mut_ptr() as u64,
        ],
        1,
    );
    for i in 0..8 {
        if b[i] != 0 {
            assert_eq!(q[i], a[i].wrapping_div(b[i]));
            assert_eq!(r[i], a[i].wrapping_rem(b[i]));
        }
    }
}

#[test]
fn atomic_add_from_many_threads() {
    let k = kernel(
        "kernel a(f: *mut f32, i: *mut i32) { atomic_add(f + range(4) * 0, full([4], 0.5, f32)); \
         atomic_add(i + range(4) * 0, full([4], 1, i32)); }",
        "a",
    );
    let mut f = 0f32;
    let mut i = 0i32;
    let args = [&mut f as *mut f32 as u64, &mut i as *mut i32 as u64];
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| run(&k, &args, 1000));
        }
    });
    assert_eq!(i, 8 * 1000 * 4);
    assert_eq!(f, 8.0 * 1000.0 * 4.0 * 0.5);
}

#[test]
fn reductions_both_axes_and_loop_carries() {
    let k = kernel(
        "kernel r(x: *f32, s0: *mut f32, m1: *mut f32, a1: *mut i32, lse: *mut f32, n: i32) {
            let rows = range(8)[:, None];
            let cols = range(16)[None, :];
            let t = load(x + rows * 16 + cols);
            store(s0 + range(16), sum(t, axis: 0));
            store(m1 + range(8), max(t, axis: 1));
            store(a1 + range(8), argmax(t, axis: 1));
            let mut m = -inf;
            let mut l = 0.0;
            let mut acc = zeros([16], f32);
            for start in 0..n step 16 {
                let o = start + range(16);
                let v = load(x + o, mask: o < n, other: -inf);
                let m_new = max(m, max(v));
                l = l * exp(m - m_new) + sum(exp(v - m_new));
                m = m_new;
                acc += where(o < n, v, 0.0);
            }
            store(lse, m + log(l) + sum(acc) * 0.0);
        }",
        "r",
    );
    let mut rng = Rng(3);
    let x: Vec<f32> = (0..128).map(|_| rng.f32() * 4.0).collect();
    let (mut s0, mut m1, mut a1, mut lse) = ([0f32; 16], [0f32; 8], [0i32; 8], 0f32);
    let n = 117;
    let args = [
        x.as_ptr() as u64,
        s0.as_mut_ptr() as u64,
        m1.as_mut_ptr() as u64,
        a1.as_mut_ptr() as u64,
        &mut lse as *mut f32 as u64,
        n as u64,
    ];
    run(&k, &args, 1);
    for c in 0..16 {
        let want: f64 = (0..8).map(|r| x[r * 16 + c] as f64).sum();
        assert!((s0[c] as f64 - want).abs() < 1e-4);
    }
    for r in 0..8 {
        let row = &x[r * 16..(r + 1) * 16];
        let (ai, &mx) =
            row.iter().enumerate().fold(
                (0, &f32::MIN),
                |b, (i, v)| if *v > *b.1 { (i, v) } else { b },
            );
        assert_eq!(m1[r], mx);
        assert_eq!(a1[r], ai as i32);
    }
    let mx = x[..n].iter().fold(f64::MIN, |a, &v| a.max(v as f64));
    let want = mx
        + x[..n]
            .iter()
            .map(|&v| (v as f64 - mx).exp())
            .sum::<f64>()
            .ln();
    assert!((lse as f64 - want).abs() < 1e-4, "{lse} vs {want}");
}

#[test]
fn clif_of_small_kernels() {
    for (name, src) in [
        ("add", "kernel add(a: *bf16, b: *f32, out: *mut f32, n: i32) { let o = range(16); let m = o < n; store(out + o, load(a + o, mask: m) as f32 + load(b + o, mask: m), mask: m); }"),
        ("rowsum", "kernel rowsum(x: *f32, out: *mut f32) { let t = load(x + range(4)[:, None] * 8 + range(8)[None, :]); store(out + range(4), sum(t * t, axis: 1)); }"),
    ] {
        let ks = compile_to_ir(&Source::new("t.kiln", src), &Defines::new()).unwrap();
        let clif = kiln_compiler::backend::cranelift::emit_clif(&ks[0], CpuOptions::default())
            .unwrap();
        insta::assert_snapshot!(format!("clif_{name}"), clif);
    }
}

/// Compiles and runs `y = f(x)` over 16 elements, where `body` computes `a` from `let mut a`,
/// and checks it took under `seconds`.
fn run_within(body: &str, seconds: f64) -> Vec<f32> {
    let src = format!(
        "kernel c(x: *f32, y: *mut f32) {{ let o = range(16); let mut a = load(x + o);\n{body}\nstore(y + o, a); }}"
    );
    let start = std::time::Instant::now();
    let k = kernel(&src, "c");
    let clif_start = std::time::Instant::now();
    let ks = compile_to_ir(&Source::new("t.kiln", &src), &Defines::new()).unwrap();
    kiln_compiler::backend::cranelift::emit_clif(&ks[0], CpuOptions::default()).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        elapsed < seconds,
        "{elapsed:.2} s to compile (clif alone {:.2} s)",
        clif_start.elapsed().as_secs_f64()
    );
    let x: Vec<f32> = (0..16).map(|i| i as f32 / 16.0 - 0.5).collect();
    let mut y = vec![f32::NAN; 16];
    run(&k, &[x.as_ptr() as u64, y.as_mut_ptr() as u64], 1);
    y
}

#[test]
fn lowering_is_linear_in_chains_and_repeated_operands() {
    // Found by an adversarial run: each of these took exponential time (9 steps of the first
    // took over 30 s). Now every one takes well under a second.
    let x: Vec<f32> = (0..16).map(|i| i as f32 / 16.0 - 0.5).collect();
    let steps = "a = a * 1.5 + 1.0;\n".repeat(40);
    let y = run_within(&steps, 10.0);
    let want: Vec<f32> = x
        .iter()
        .map(|&v| (0..40).fold(v, |a, _| a * 1.5 + 1.0))
        .collect();
    assert_eq!(y, want);

    // Every value used twice by the next: the expansion doubles per step.
    let doubling = "a = a + a;\n".repeat(30);
    let y = run_within(&doubling, 10.0);
    let want: Vec<f32> = x.iter().map(|&v| v * (1u64 << 30) as f32).collect();
    assert_eq!(y, want);

    // One long sum with the same operand: `a + a + a + ...`.
    let terms = vec!["a"; 40].join(" + ");
    let y = run_within(&format!("a = {terms};"), 10.0);
    let want: Vec<f32> = x.iter().map(|&v| (0..39).fold(v, |s, _| s + v)).collect();
    assert_eq!(y, want);

    // Deep nesting of calls: exp(exp(...exp(a * 0.25)... * 0.25) * 0.25).
    let nested = (0..25).fold("a".to_string(), |inner, _| format!("exp({inner} * 0.25)"));
    let y = run_within(&format!("a = {nested};"), 10.0);
    for (&y, &v) in y.iter().zip(&x) {
        let want = (0..25).fold(v, |a, _| (a * 0.25).exp());
        assert!((y - want).abs() <= 1e-5 * want.abs(), "{y} vs {want}");
    }
}

#[test]
fn a_frame_past_the_limit_is_an_error_not_a_panic() {
    // Found by an adversarial run: helpers inlining 257 loads of the largest tile made Cranelift
    // panic ("Offset in Slot is greater than 2GB"). The frame is now bounded first.
    let src = format!(
        "fn get(x, i) {{ load(x + range(1048576) + i) }}
         kernel k(x: *f32, y: *mut f32) {{
             {}
             store(y + range(1048576), {});
         }}",
        (0..257)
            .map(|i| format!("let t{i} = get(x, {i});"))
            .collect::<String>(),
        (0..257)
            .map(|i| format!("t{i} * t{}", 256 - i))
            .collect::<Vec<_>>()
            .chunks(8)
            .map(|c| format!("({})", c.join(" + ")))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let ks = compile_to_ir(&Source::new("t.kiln", &src), &Defines::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let err = match compile_with(&ks[0], CpuOptions::default()) {
        Ok(_) => panic!("a 1 GiB frame compiled"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("more than 1024 MiB"), "{err}");
}

#[test]
fn a_kernel_says_whether_it_adds_with_atomics_even_inside_a_loop() {
    let plain = "kernel k(x: *mut f32) { store(x + range(4), 1.0); }";
    let nested = "kernel k(x: *mut f32, n: i32) {
        for i in 0..n step 1 { if i > 0 { atomic_add(x, 1.0); } }
    }";
    assert!(!kernel(plain, "k").has_atomics());
    assert!(kernel(nested, "k").has_atomics());
}
