//! Type parameters (`<T: type = bf16>`): parsing, checking, specialisation through defines, CPU
//! runs of one generic kernel in f32, bf16 and f16, and the code each specialisation gets.

use half::{bf16, f16};
use kiln_compiler::ast::{Item, TypeExprKind};
use kiln_compiler::backend::cranelift::{compile_with, emit_clif, CpuOptions};
use kiln_compiler::ir::{self, ParamKind};
use kiln_compiler::{check, compile_to_ir, parse, parse_define_value, syntax};
use kiln_compiler::{ConstValue, DType, Defines, Source};

/// A row normalisation generic over its element type: `*T` parameters, `as T`, a `let` annotated
/// with `T`, and `zeros`/`full` of element type `T`. Accumulates in f32 whatever `T` is.
const NORM: &str = "\
kernel norm<T: type = bf16, BLOCK: i32 = 256>(x: *T, w: *T, y: *mut T, rstd: *mut f32, n: i32, eps: f32) {
    let row = program_id(0);
    let cols = range(BLOCK);
    let m = cols < n;
    let xv = load(x + row * n + cols, mask: m, other: 0.0) as f32;
    let r = rsqrt(sum(xv * xv) / n as f32 + eps);
    store(rstd + row, r);
    let wv = (load(w + cols, mask: m, other: 0.0) + zeros([BLOCK], T)) as f32;
    let half: T = 0.5;
    let shift = full([BLOCK], half, T) as f32;
    store(y + row * n + cols, (xv * r * wv + shift) as T, mask: m);
}
";

fn src(text: &str) -> Source {
    Source::new("t.kiln", text)
}

fn with_t(d: DType) -> Defines {
    Defines::from([("T".to_string(), ConstValue::DType(d))])
}

fn checked(text: &str, defines: &Defines) -> ir::Kernel {
    let mut ks = check(&src(text), defines).unwrap_or_else(|e| panic!("{e}"));
    ks.remove(0)
}

fn rendered_error(text: &str, defines: &Defines) -> String {
    match check(&src(text), defines) {
        Ok(_) => panic!("should not compile:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn type_parameters_parse() {
    let m = parse(&src(NORM)).unwrap_or_else(|e| panic!("{e}"));
    let Item::Kernel(k) = &m.items[0] else {
        panic!("not a kernel")
    };
    assert_eq!(k.consts[0].name.name, "T");
    assert_eq!(k.consts[0].ty.kind, TypeExprKind::Type);
    assert_eq!(k.consts[1].ty.kind, TypeExprKind::Scalar(DType::I32));
    let param = |i: usize| k.params[i].ty.kind.clone();
    let t = |ptr| TypeExprKind::Param {
        name: "T".into(),
        ptr,
    };
    assert_eq!(param(0), t(Some(false)));
    assert_eq!(param(2), t(Some(true)));
    assert_eq!(
        param(3),
        TypeExprKind::Ptr {
            pointee: DType::F32,
            mutable: true
        }
    );
    let ast = syntax::print_module(&m);
    assert!(ast.contains("(const T type bf16)"), "{ast}");
    assert!(
        ast.contains("(param x *T)") && ast.contains("(param y *mut T)"),
        "{ast}"
    );
}

#[test]
fn only_declared_type_parameters_are_types() {
    // `U` is not declared, and a helper's parameter annotations name element types: both are
    // unknown types, as before.
    for text in [
        "kernel k<T: type = f32>(x: *U) {}",
        "fn f(v: T) { v }\nkernel k<T: type = f32>(x: *T) {}",
        "kernel k<T: type = f32>(x: *T) {}\nkernel j(x: *T) {}",
    ] {
        let e = parse(&src(text)).unwrap_err().to_string();
        assert!(e.contains("error: unknown type `"), "{e}");
    }
    // `type` is not a keyword: it still works as a name.
    checked(
        "kernel k(type: *f32) { let v = load(type); }",
        &Defines::new(),
    );
}

#[test]
fn defines_specialise_the_element_type() {
    for (defines, want) in [
        (Defines::new(), DType::Bf16),
        (with_t(DType::F32), DType::F32),
        (with_t(DType::F16), DType::F16),
    ] {
        let k = checked(NORM, &defines);
        assert_eq!(k.consts[0], ("T".to_string(), ConstValue::DType(want)));
        assert_eq!(k.consts[1], ("BLOCK".to_string(), ConstValue::Int(256)));
        assert_eq!(
            k.params[2].kind,
            ParamKind::Ptr {
                pointee: want,
                mutable: true
            }
        );
        assert_eq!(
            k.params[3].kind,
            ParamKind::Ptr {
                pointee: DType::F32,
                mutable: true
            }
        );
        let text = ir::print_kernel(&k);
        assert!(
            text.starts_with(&format!("kernel @norm<T = {want}, BLOCK = 256>")),
            "{text}"
        );
    }
}

#[test]
fn type_names_parse_as_define_values() {
    for d in DType::ALL {
        assert_eq!(parse_define_value(d.name()), Some(ConstValue::DType(d)));
    }
    assert_eq!(parse_define_value("true"), Some(ConstValue::Bool(true)));
    assert_eq!(parse_define_value("7"), Some(ConstValue::Int(7)));
    assert_eq!(parse_define_value("float"), None);
    assert_eq!(ConstValue::from(DType::F16), ConstValue::DType(DType::F16));
    assert_eq!(ConstValue::DType(DType::Bf16).to_string(), "bf16");
}

#[test]
fn the_printed_ir_parses_back() {
    let k = checked(NORM, &with_t(DType::F32));
    let text = ir::print_kernel(&k);
    let back = ir::parse_kernel(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.consts, k.consts);
    assert_eq!(ir::print_kernel(&back), text);
}

#[test]
fn defaults_may_name_earlier_type_parameters_and_helpers_take_types_as_arguments() {
    let text = "\
fn zeros_of(t) { zeros([8], t) }
kernel k<T: type = f16, U: type = T>(x: *T, y: *mut U) {
    let v: U = 2.0;
    store(y + range(8), (load(x + range(8)) as U) * v + zeros_of(U));
}";
    let k = checked(text, &Defines::new());
    assert_eq!(
        k.consts[1],
        ("U".to_string(), ConstValue::DType(DType::F16))
    );
    let defines = Defines::from([
        ("T".to_string(), ConstValue::DType(DType::Bf16)),
        ("U".to_string(), ConstValue::DType(DType::F32)),
    ]);
    let k = checked(text, &defines);
    let ir = ir::print_kernel(&k);
    assert!(ir.contains("<8xf32>") && ir.contains("%x: *bf16"), "{ir}");
}

#[test]
fn a_helper_casts_to_a_type_it_is_given() {
    let text = "\
fn store_as(p, v, t) { store(p, v as t); }
kernel k<T: type = bf16>(x: *f32, y: *mut T) {
    store_as(y + range(8), load(x + range(8)) * 2.0, T);
}";
    let ir = ir::print_kernel(&checked(text, &with_t(DType::F16)));
    assert!(ir.contains("cast %") && ir.contains("<8xf16>"), "{ir}");
    let e = rendered_error(&text.replace("2.0, T)", "2.0, 3)"), &Defines::new());
    assert!(
        e.contains("error: `t` is not a type here: it holds a `i32` literal"),
        "{e}"
    );
}

#[test]
fn a_type_parameter_without_a_default_must_be_defined() {
    let text = "kernel k<T: type>(x: *T, y: *mut T) { store(y, load(x)); }";
    let e = rendered_error(text, &Defines::new());
    assert!(
        e.contains("error: `k` needs an element type for `T`: pass `-D T=f32`"),
        "{e}"
    );
    assert!(e.contains('^'), "{e}");
    let k = checked(text, &with_t(DType::I32));
    assert_eq!(
        k.params[0].kind,
        ParamKind::Ptr {
            pointee: DType::I32,
            mutable: false
        }
    );
}

#[test]
fn defines_of_the_wrong_kind_are_errors_with_carets() {
    let e = rendered_error(
        NORM,
        &Defines::from([("T".to_string(), ConstValue::Int(4))]),
    );
    insta::assert_snapshot!("number_defined_for_a_type_parameter", e);
    let e = rendered_error(
        NORM,
        &Defines::from([("BLOCK".to_string(), ConstValue::DType(DType::F32))]),
    );
    insta::assert_snapshot!("type_defined_for_an_integer_constant", e);
}

/// Runs `norm` specialised for one element type over random rows and checks it against an f64
/// reference computed from the same (rounded) inputs.
fn run_norm<E: Copy>(d: DType, to: fn(f32) -> E, from: fn(E) -> f64, rel_tol: f64) {
    let ks = compile_to_ir(&src(NORM), &with_t(d)).unwrap_or_else(|e| panic!("{e}"));
    let k = compile_with(&ks[0], CpuOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let (rows, n) = (5usize, 200usize);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2_000_001) as f32 / 1_000_000.0 - 1.0
    };
    let x: Vec<E> = (0..rows * n).map(|_| to(rand() * 3.0)).collect();
    let w: Vec<E> = (0..n).map(|_| to(rand() + 0.25)).collect();
    let mut y: Vec<E> = vec![to(0.0); rows * n];
    let mut rstd = vec![0f32; rows];
    let eps = 1e-6f32;
    let size = std::mem::size_of::<E>() as u64;
    let args = [
        x.as_ptr() as u64,
        w.as_ptr() as u64,
        y.as_mut_ptr() as u64,
        rstd.as_mut_ptr() as u64,
        n as u64,
        eps.to_bits() as u64,
    ];
    let bounds = [
        x.len() as u64 * size,
        w.len() as u64 * size,
        y.len() as u64 * size,
        rows as u64 * 4,
        0,
        0,
    ];
    for p in 0..rows as u32 {
        let fault = unsafe { k.run_program(&args, &bounds, [p, 0, 0], [rows as u32, 1, 1]) };
        assert_eq!(fault.unwrap(), None, "{d}");
    }
    for r in 0..rows {
        let xr = &x[r * n..(r + 1) * n];
        let ms = xr.iter().map(|v| from(*v).powi(2)).sum::<f64>() / n as f64;
        let rs = 1.0 / (ms + eps as f64).sqrt();
        assert!(
            (rstd[r] as f64 - rs).abs() <= 1e-5 * rs,
            "{d}: rstd row {r}"
        );
        for c in 0..n {
            let want = from(xr[c]) * rs * from(w[c]) + 0.5;
            let got = from(y[r * n + c]);
            assert!(
                (got - want).abs() <= rel_tol * want.abs() + 1e-6,
                "{d}: y[{r},{c}] {got} vs {want}"
            );
        }
    }
}

#[test]
fn one_generic_kernel_runs_in_f32_bf16_and_f16() {
    run_norm(DType::F32, |v| v, f64::from, 1e-5);
    // One rounding of the f32 result: at most half an ulp, 2^-8 (bf16) and 2^-11 (f16) relative.
    run_norm(DType::Bf16, bf16::from_f32, bf16::to_f64, 4e-3);
    run_norm(DType::F16, f16::from_f32, f16::to_f64, 5e-4);
}

#[test]
fn specialisations_in_ir_and_clif() {
    for d in [DType::Bf16, DType::F32] {
        let ks = compile_to_ir(&src(NORM), &with_t(d)).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(format!("norm_ir_{d}"), ir::print_kernel(&ks[0]));
        let clif = emit_clif(&ks[0], CpuOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(format!("norm_clif_{d}"), clif);
    }
}

#[cfg(feature = "nvptx")]
#[test]
fn specialisations_in_ptx() {
    use kiln_compiler::backend::nvptx::{compile_ptx, Arch, PtxOptions};
    for d in [DType::Bf16, DType::F32] {
        let ks = compile_to_ir(&src(NORM), &with_t(d)).unwrap_or_else(|e| panic!("{e}"));
        let ptx = compile_ptx(&ks[0], &PtxOptions::new(Arch::Sm90, 4))
            .unwrap_or_else(|e| panic!("{e}"))
            .ptx;
        insta::assert_snapshot!(format!("norm_ptx_sm90_{d}"), ptx);
    }
}
