//! Binding arguments by name, checked against hand-written parameter lists.

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::DType;
use kiln_runtime::{Args, Device, Error};

use crate::cuda_or_skip;

fn params() -> Vec<Param> {
    let p = |name: &str, kind| Param {
        name: name.into(),
        kind,
    };
    vec![
        p(
            "x",
            ParamKind::Ptr {
                pointee: DType::Bf16,
                mutable: false,
            },
        ),
        p(
            "y",
            ParamKind::Ptr {
                pointee: DType::F32,
                mutable: true,
            },
        ),
        p("n", ParamKind::Scalar(DType::I32)),
        p("eps", ParamKind::Scalar(DType::F32)),
        p("total", ParamKind::Scalar(DType::I64)),
    ]
}

const PARAMS: &str = "`x: *bf16`, `y: *mut f32`, `n: i32`, `eps: f32`, `total: i64`";

/// The launch error's message; panics if `result` is not a launch error of `rmsnorm`.
fn launch_error(result: kiln_runtime::Result<()>) -> String {
    match result {
        Err(e @ Error::Launch { .. }) => {
            let message = e.to_string();
            assert!(
                message.starts_with("launch of kernel `rmsnorm`: "),
                "{message}"
            );
            message
        }
        other => panic!("expected a launch error, got {other:?}"),
    }
}

#[test]
fn matching_arguments_pass_in_any_order() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let mut y = cpu.alloc(DType::F32, 4).unwrap();
    let args = Args::new()
        .input("x", &x)
        .output("y", &mut y)
        .i32("n", 4)
        .f32("eps", 1e-6)
        .i64("total", 4);
    args.check("rmsnorm", &params(), &cpu).unwrap();
    drop(args);
    let args = Args::new()
        .i64("total", 0)
        .f32("eps", 0.0)
        .in_out("y", y.slice_mut(1..3).unwrap())
        .i32("n", 0)
        .input("x", x.slice(..2).unwrap());
    args.check("rmsnorm", &params(), &cpu).unwrap();
}

#[test]
fn an_unknown_name_lists_the_parameters() {
    let cpu = Device::cpu();
    let message = launch_error(Args::new().i32("m", 1).check("rmsnorm", &params(), &cpu));
    assert!(
        message.contains(&format!(
            "no parameter named `m`; the parameters are {PARAMS}"
        )),
        "{message}"
    );
}

#[test]
fn every_parameter_is_given_exactly_once() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let mut y = cpu.alloc(DType::F32, 4).unwrap();
    let message = launch_error(
        Args::new()
            .input("x", &x)
            .output("y", &mut y)
            .f32("eps", 1e-6)
            .i64("total", 4)
            .check("rmsnorm", &params(), &cpu),
    );
    assert!(
        message.contains(&format!(
            "parameter `n: i32` is not given; the parameters are {PARAMS}"
        )),
        "{message}"
    );
    let message = launch_error(Args::new().input("x", &x).input("x", &x).check(
        "rmsnorm",
        &params(),
        &cpu,
    ));
    assert!(
        message.contains("parameter `x` is given twice"),
        "{message}"
    );
}

#[test]
fn inputs_and_outputs_are_not_interchangeable() {
    let cpu = Device::cpu();
    let mut x = cpu.alloc(DType::Bf16, 4).unwrap();
    let y = cpu.alloc(DType::F32, 4).unwrap();
    let message = launch_error(
        Args::new()
            .output("x", &mut x)
            .check("rmsnorm", &params(), &cpu),
    );
    assert!(
        message.contains(
            "parameter `x: *bf16`: the kernel only reads it: pass it with `input`, not `output`"
        ),
        "{message}"
    );
    let message = launch_error(Args::new().input("x", &x).input("y", &y).check(
        "rmsnorm",
        &params(),
        &cpu,
    ));
    assert!(
        message.contains("parameter `y: *mut f32`: the kernel writes it: pass it with `output`"),
        "{message}"
    );
}

#[test]
fn wrong_buffer_dtype_names_the_parameter() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::F32, 4).unwrap();
    let mut y = cpu.alloc(DType::F32, 4).unwrap();
    let args = Args::new()
        .input("x", &x)
        .output("y", &mut y)
        .i32("n", 4)
        .f32("eps", 1e-6)
        .i64("total", 4);
    let message = launch_error(args.check("rmsnorm", &params(), &cpu));
    assert!(
        message.contains("parameter `x: *bf16`: expected a buffer of bf16, got a buffer of f32"),
        "{message}"
    );
}

#[test]
fn scalars_must_have_the_exact_type() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let mut y = cpu.alloc(DType::F32, 4).unwrap();
    type Setter = for<'a> fn(Args<'a>) -> Args<'a>;
    let cases: [(Setter, &str); 3] = [
        (
            |a| a.i64("n", 4).f32("eps", 1e-6).i64("total", 4),
            "parameter `n: i32`: expected an i32, got an i64",
        ),
        (
            |a| a.i32("n", 4).i32("eps", 1).i64("total", 4),
            "parameter `eps: f32`: expected an f32, got an i32",
        ),
        (
            |a| a.i32("n", 4).f32("eps", 1e-6).i32("total", 4),
            "parameter `total: i64`: expected an i64, got an i32",
        ),
    ];
    for (scalars, expected) in cases {
        let args = scalars(Args::new().input("x", &x).output("y", &mut y));
        let message = launch_error(args.check("rmsnorm", &params(), &cpu));
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn buffers_and_scalars_are_not_interchangeable() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let mut y = cpu.alloc(DType::F32, 4).unwrap();
    let args = Args::new()
        .input("x", &x)
        .i64("y", 0)
        .i32("n", 4)
        .f32("eps", 1e-6)
        .i64("total", 4);
    let message = launch_error(args.check("rmsnorm", &params(), &cpu));
    assert!(
        message.contains("parameter `y: *mut f32`: expected a buffer of f32, got an i64"),
        "{message}"
    );
    let args = Args::new()
        .input("x", &x)
        .output("n", &mut y)
        .check("rmsnorm", &params(), &cpu);
    let message = launch_error(args);
    assert!(
        message.contains("parameter `y: *mut f32` is not given")
            || message.contains(
                "parameter `n: i32`: expected an i32, got an output buffer of f32 on cpu"
            ),
        "{message}"
    );
}

#[test]
fn scalar_types_without_a_launch_form_are_refused() {
    let cpu = Device::cpu();
    let params = [Param {
        name: "flag".into(),
        kind: ParamKind::Scalar(DType::Bool),
    }];
    let message = launch_error(Args::new().i32("flag", 1).check("rmsnorm", &params, &cpu));
    assert!(
        message.contains("bool scalar parameters cannot be passed at launch"),
        "{message}"
    );
}

#[test]
fn buffers_must_be_on_the_kernel_device() {
    let Some(gpu) = cuda_or_skip("buffers_must_be_on_the_kernel_device") else {
        return;
    };
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let mut y = gpu.alloc(DType::F32, 4).unwrap();
    let args = Args::new()
        .input("x", &x)
        .output("y", &mut y)
        .i32("n", 4)
        .f32("eps", 1e-6)
        .i64("total", 4);
    let message = launch_error(args.check("rmsnorm", &params(), &gpu));
    assert!(
        message.contains("parameter `x: *bf16`: the buffer is on cpu, the kernel on cuda:0"),
        "{message}"
    );
}
