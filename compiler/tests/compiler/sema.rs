//! The typing rules, constant folding, and what the checker produces for small programs.

use kiln_compiler::ir::{Op, Type};
use kiln_compiler::sema::fold::{fold_binary, fold_unary};
use kiln_compiler::sema::rules::{broadcast_shapes, is_pow2, promote};
use kiln_compiler::sema::value::Const;
use kiln_compiler::syntax::ast::{BinOp, UnOp};
use kiln_compiler::{check, ConstValue, DType, Defines, Source};

#[test]
fn broadcasting() {
    assert_eq!(broadcast_shapes(&[], &[4]), Some(vec![4]));
    assert_eq!(broadcast_shapes(&[4, 1], &[1, 8]), Some(vec![4, 8]));
    assert_eq!(broadcast_shapes(&[8], &[4, 8]), Some(vec![4, 8]));
    assert_eq!(broadcast_shapes(&[2, 1, 8], &[4, 1]), Some(vec![2, 4, 8]));
    assert_eq!(broadcast_shapes(&[4], &[8]), None);
    assert_eq!(broadcast_shapes(&[4, 8], &[8, 4]), None);
    assert_eq!(broadcast_shapes(&[1], &[]), Some(vec![1]));
}

#[test]
fn promotion() {
    assert_eq!(promote(DType::I32, DType::I64), Ok(DType::I64));
    assert_eq!(promote(DType::Bf16, DType::F32), Ok(DType::F32));
    assert_eq!(promote(DType::F16, DType::F16), Ok(DType::F16));
    assert!(promote(DType::Bf16, DType::F16).is_err());
    assert!(promote(DType::I32, DType::F32).is_err());
    assert!(promote(DType::Bool, DType::I32).is_err());
}

#[test]
fn powers_of_two() {
    assert!(is_pow2(1) && is_pow2(1024));
    assert!(!is_pow2(0) && !is_pow2(-4) && !is_pow2(896));
}

fn int(v: i64, dtype: DType) -> Const {
    Const {
        value: ConstValue::Int(v),
        dtype,
        weak: false,
    }
}

#[test]
fn folding_integers() {
    let block = int(1024, DType::I32);
    let r = fold_binary(BinOp::Div, block, Const::weak_int(32)).unwrap();
    assert_eq!(
        (r.value, r.dtype, r.weak),
        (ConstValue::Int(32), DType::I32, false)
    );
    // i32 arithmetic wraps like the hardware does.
    let r = fold_binary(BinOp::Mul, int(1 << 30, DType::I32), Const::weak_int(4)).unwrap();
    assert_eq!(r.value, ConstValue::Int(0));
    let r = fold_binary(BinOp::Mul, int(1 << 30, DType::I64), Const::weak_int(4)).unwrap();
    assert_eq!(r.value, ConstValue::Int(1 << 32));
    assert_eq!(
        fold_binary(BinOp::Rem, int(-7, DType::I32), Const::weak_int(2))
            .unwrap()
            .value,
        ConstValue::Int(-1)
    );
    assert!(fold_binary(BinOp::Div, block, Const::weak_int(0)).is_err());
    let c = fold_binary(BinOp::Ge, block, Const::weak_int(32)).unwrap();
    assert_eq!(c.value, ConstValue::Bool(true));
    assert_eq!(
        fold_unary(UnOp::Neg, int(i32::MIN as i64, DType::I32))
            .unwrap()
            .value,
        ConstValue::Int(i32::MIN as i64)
    );
}

#[test]
fn folding_floats_and_literals() {
    // Two weak literals: an int and a float give a weak float.
    let r = fold_binary(BinOp::Mul, Const::weak_int(2), Const::weak_float(0.25)).unwrap();
    assert_eq!((r.value, r.weak), (ConstValue::Float(0.5), true));
    // A float literal does not silently become an integer.
    assert!(fold_binary(BinOp::Add, int(3, DType::I32), Const::weak_float(0.5)).is_err());
    // Typed f32 constants round to f32.
    let third = Const {
        value: ConstValue::Float(1.0),
        dtype: DType::F32,
        weak: false,
    };
    let r = fold_binary(BinOp::Div, third, Const::weak_int(3)).unwrap();
    assert_eq!(r.value, ConstValue::Float((1.0f32 / 3.0) as f64));
    // Casts follow the language rules: truncation toward zero, saturation, NaN -> 0.
    assert_eq!(
        Const::weak_float(-2.7).cast(DType::I32).value,
        ConstValue::Int(-2)
    );
    assert_eq!(
        Const::weak_float(1e20).cast(DType::I32).value,
        ConstValue::Int(i32::MAX as i64)
    );
    assert_eq!(
        Const::weak_float(f64::NAN).cast(DType::I64).value,
        ConstValue::Int(0)
    );
    assert_eq!(
        Const::weak_float(1.0 + 1.0 / 256.0).cast(DType::Bf16).value,
        ConstValue::Float(1.0)
    );
    assert_eq!(
        Const::weak_float(1.0 + 3.0 / 256.0).cast(DType::Bf16).value,
        ConstValue::Float(1.015625)
    );
    assert_eq!(
        Const::weak_float(65520.0).cast(DType::F16).value,
        ConstValue::Float(f64::INFINITY)
    );
}

fn kernel(src: &str) -> kiln_compiler::ir::Kernel {
    let mut ks =
        check(&Source::new("test.kiln", src), &Defines::new()).unwrap_or_else(|e| panic!("{e}"));
    ks.remove(0)
}

fn result_types(k: &kiln_compiler::ir::Kernel, pred: impl Fn(&Op) -> bool) -> Vec<Type> {
    k.body
        .insts
        .iter()
        .filter(|i| pred(&i.op))
        .flat_map(|i| i.results.iter().map(|r| k.ty(*r).clone()))
        .collect()
}

#[test]
fn constants_size_tiles_and_fold_away() {
    let k = kernel(
        "kernel k<BLOCK: i32 = 256>(y: *mut f32) {
            let n = BLOCK / 4 * 2;
            store(y + range(n), zeros([n], f32));
        }",
    );
    assert_eq!(
        result_types(&k, |o| matches!(o, Op::Range(_))),
        vec![Type::tile(DType::I32, &[128])]
    );
    assert_eq!(k.consts, vec![("BLOCK".to_string(), ConstValue::Int(256))]);
}

#[test]
fn defines_override_defaults() {
    let mut d = Defines::new();
    d.insert("BLOCK".into(), ConstValue::Int(64));
    let ks = check(
        &Source::new(
            "t.kiln",
            "kernel k<BLOCK: i32 = 256>(y: *mut i32) { store(y + range(BLOCK), range(BLOCK)); }",
        ),
        &d,
    )
    .unwrap();
    assert_eq!(ks[0].consts[0].1, ConstValue::Int(64));
}

#[test]
fn broadcasting_inserts_explicit_ops() {
    let k = kernel(
        "kernel k(y: *mut f32) {
            let r = range(4)[:, None];
            let c = range(8)[None, :];
            store(y + r * 8 + c, (r + c) as f32);
        }",
    );
    let bcast = result_types(&k, |o| matches!(o, Op::Broadcast(_)));
    assert!(bcast.iter().all(|t| t.shape == vec![4, 8]), "{bcast:?}");
    assert!(!bcast.is_empty());
}

#[test]
fn loops_carry_assigned_mutables() {
    let k = kernel(
        "kernel k(x: *f32, y: *mut f32, n: i32) {
            let mut m = -inf;
            let mut acc = zeros([16], f32);
            let unchanged = 1.0;
            for i in 0..n step 16 {
                let v = load(x + i + range(16));
                m = max(m, max(v));
                acc += v;
            }
            store(y + range(16), acc + m + unchanged);
        }",
    );
    let f = k
        .body
        .insts
        .iter()
        .find(|i| matches!(i.op, Op::For { .. }))
        .unwrap();
    let Op::For { init, body, .. } = &f.op else {
        unreachable!()
    };
    assert_eq!(init.len(), 2);
    assert_eq!(body.args.len(), 3);
    assert_eq!(
        f.results
            .iter()
            .map(|r| k.ty(*r).clone())
            .collect::<Vec<_>>(),
        vec![Type::scalar(DType::F32), Type::tile(DType::F32, &[16])]
    );
}

#[test]
fn constant_if_compiles_only_the_branch_taken() {
    let src = "kernel k<FLAG: bool = false>(y: *mut f32) {
        if FLAG { store(y, this_name_does_not_exist); } else { store(y, 1.0); }
    }";
    kernel(src);
    let mut d = Defines::new();
    d.insert("FLAG".into(), ConstValue::Bool(true));
    let err = check(&Source::new("t.kiln", src), &d).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown name `this_name_does_not_exist`"),
        "{err}"
    );
}

#[test]
fn runtime_if_yields_assigned_values() {
    let k = kernel(
        "kernel k(y: *mut f32, n: i32) {
            let mut v = 1.0;
            if n > 4 { v = 2.0; }
            store(y, v);
        }",
    );
    let i = k
        .body
        .insts
        .iter()
        .find(|i| matches!(i.op, Op::If { .. }))
        .unwrap();
    assert_eq!(i.results.len(), 1);
}

#[test]
fn helpers_are_generic_over_shapes() {
    let k = kernel(
        "fn twice(x) { x + x }
        kernel k(y: *mut f32) {
            store(y, twice(2.5));
            store(y + range(8), twice(range(8) as f32));
        }",
    );
    kiln_compiler::ir::verify(&k).unwrap();
}

#[test]
fn typed_helpers_widen_16_bit_floats_as_binary_operations_do() {
    let k = kernel(
        "fn gelu(x: f32) { x * sigmoid(1.702 * x) }
        kernel k(x: *bf16, y: *mut f32) {
            let v = load(x + range(8));
            store(y + range(8), gelu(v));
        }",
    );
    kiln_compiler::ir::verify(&k).unwrap();
    let casts = result_types(&k, |op| matches!(op, Op::Cast(_)));
    assert_eq!(casts, [Type::tile(DType::F32, &[8])]);
}

#[test]
fn typed_helpers_hint_a_cast_when_they_cannot_widen() {
    let src = "fn gelu(x: f32) { x * sigmoid(1.702 * x) }
        kernel k(x: *i32, y: *mut f32) {
            store(y + range(8), gelu(load(x + range(8))));
        }";
    let e = check(&Source::new("test.kiln", src), &Defines::new()).unwrap_err();
    let message = &e.diagnostics[0].message;
    assert!(
        message.starts_with("`gelu` expects `f32` for `x`, found"),
        "{e}"
    );
    assert!(message.ends_with("i32>`; cast it with `as f32`"), "{e}");
}

#[test]
fn offsets_are_widened_to_i64() {
    let src = Source::new(
        "t.kiln",
        "kernel k(x: *f32, y: *mut f32, n: i32) {
        let row = program_id(0);
        store(y + row * n + range(4), load(x + row * n + range(4)));
    }",
    );
    let k = kiln_compiler::compile_to_ir(&src, &Defines::new())
        .unwrap()
        .remove(0);
    let text = kiln_compiler::ir::print_kernel(&k);
    assert!(text.contains("mul") && text.contains(": i64"), "{text}");
    for inst in &k.body.insts {
        if let Op::PtrAdd(_, off) = inst.op {
            assert_eq!(k.ty(off).dtype(), Some(DType::I64), "{text}");
        }
        if let Op::Binary(kiln_compiler::ir::BinaryOp::Mul, a, _) = inst.op {
            assert_eq!(
                k.ty(a).dtype(),
                Some(DType::I64),
                "the product must be computed in i64:\n{text}"
            );
        }
    }
}

/// Seconds to check (and lower to IR) `src`.
fn seconds_to_check(src: &str) -> f64 {
    let start = std::time::Instant::now();
    kiln_compiler::compile_to_ir(&kiln_compiler::Source::new("t.kiln", src), &Defines::new())
        .unwrap_or_else(|e| panic!("{e}"));
    start.elapsed().as_secs_f64()
}

#[test]
fn checking_is_linear_in_the_inlined_size() {
    // Found by an adversarial run: the IR verifier searched every open scope's list of values
    // for each use, so 40,000 flat lets took over a second (in a release build).
    let lets = |n: usize| {
        let mut src = String::from(
            "kernel k(x: *f32, y: *mut f32) { let o = range(16); let a0 = load(x + o);\n",
        );
        for i in 1..=n {
            src.push_str(&format!("let a{i} = a{} + 1.0;\n", i - 1));
        }
        src + &format!("store(y + o, a{n}); }}")
    };
    // Helpers that each call the one before twice: the inlined size doubles per level.
    let helpers = |levels: usize| {
        let mut src = String::from("fn h0(x) { x * 1.5 + 1.0 }\n");
        for i in 1..=levels {
            src.push_str(&format!(
                "fn h{i}(x) {{ h{}(x) + h{}(x * 0.5) }}\n",
                i - 1,
                i - 1
            ));
        }
        src + &format!(
            "kernel k(x: *f32, y: *mut f32) {{ let o = range(16); store(y + o, h{levels}(load(x + o))); }}"
        )
    };
    // Twice the program, about twice the time (4x would be quadratic); the smaller size is run
    // twice and the faster run kept, to keep a noisy machine from flattering the ratio.
    for (name, small, large) in [
        ("flat lets", lets(10_000), lets(20_000)),
        ("doubling helpers", helpers(11), helpers(12)),
    ] {
        let small_s = seconds_to_check(&small).min(seconds_to_check(&small));
        let large_s = seconds_to_check(&large);
        assert!(
            large_s < 3.0 * small_s + 0.05,
            "{name}: {small_s:.3} s, then {large_s:.3} s for twice the size"
        );
    }
}
