//! Argument checking, on hand-written parameter lists.

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::DType;
use kiln_runtime::launch::check_args;
use kiln_runtime::{Arg, Device, Error};

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
fn matching_arguments_pass() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let y = cpu.alloc(DType::F32, 4).unwrap();
    let args = [
        Arg::Buffer(&x),
        Arg::Buffer(&y),
        Arg::I32(4),
        Arg::F32(1e-6),
        Arg::I64(4),
    ];
    check_args("rmsnorm", &params(), &cpu, &args).unwrap();
    // Any buffer of the right type may be passed for a read-only pointer, also one written elsewhere.
    let args = [
        Arg::Buffer(&x),
        Arg::Buffer(&y),
        Arg::I32(0),
        Arg::F32(0.0),
        Arg::I64(0),
    ];
    check_args("rmsnorm", &params(), &cpu, &args).unwrap();
}

#[test]
fn wrong_count_lists_the_parameters() {
    let cpu = Device::cpu();
    let message = launch_error(check_args("rmsnorm", &params(), &cpu, &[Arg::I32(1)]));
    assert!(
        message.contains("expects 5 argument(s) (`x: *bf16`, `y: *mut f32`, `n: i32`, `eps: f32`, `total: i64`), got 1"),
        "{message}"
    );
}

#[test]
fn wrong_buffer_dtype_names_the_parameter() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::F32, 4).unwrap();
    let y = cpu.alloc(DType::F32, 4).unwrap();
    let args = [
        Arg::Buffer(&x),
        Arg::Buffer(&y),
        Arg::I32(4),
        Arg::F32(1e-6),
        Arg::I64(4),
    ];
    let message = launch_error(check_args("rmsnorm", &params(), &cpu, &args));
    assert!(
        message.contains(
            "argument 0 for parameter `x: *bf16`: expected a buffer of bf16, got a buffer of f32"
        ),
        "{message}"
    );
}

#[test]
fn scalars_must_have_the_exact_type() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let y = cpu.alloc(DType::F32, 4).unwrap();
    let cases: [(Arg, Arg, Arg, &str); 3] = [
        (
            Arg::I64(4),
            Arg::F32(1e-6),
            Arg::I64(4),
            "argument 2 for parameter `n: i32`: expected an i32, got an i64",
        ),
        (
            Arg::I32(4),
            Arg::I32(1),
            Arg::I64(4),
            "argument 3 for parameter `eps: f32`: expected an f32, got an i32",
        ),
        (
            Arg::I32(4),
            Arg::F32(1e-6),
            Arg::I32(4),
            "argument 4 for parameter `total: i64`: expected an i64, got an i32",
        ),
    ];
    for (n, eps, total, expected) in cases {
        let args = [Arg::Buffer(&x), Arg::Buffer(&y), n, eps, total];
        let message = launch_error(check_args("rmsnorm", &params(), &cpu, &args));
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn buffers_and_scalars_are_not_interchangeable() {
    let cpu = Device::cpu();
    let x = cpu.alloc(DType::Bf16, 4).unwrap();
    let y = cpu.alloc(DType::F32, 4).unwrap();
    let args = [
        Arg::Buffer(&x),
        Arg::I64(0),
        Arg::I32(4),
        Arg::F32(1e-6),
        Arg::I64(4),
    ];
    let message = launch_error(check_args("rmsnorm", &params(), &cpu, &args));
    assert!(
        message.contains("parameter `y: *mut f32`: expected a buffer of f32, got an i64"),
        "{message}"
    );
    let args = [
        Arg::Buffer(&x),
        Arg::Buffer(&y),
        Arg::Buffer(&y),
        Arg::F32(1e-6),
        Arg::I64(4),
    ];
    let message = launch_error(check_args("rmsnorm", &params(), &cpu, &args));
    assert!(
        message.contains("parameter `n: i32`: expected an i32, got a buffer of f32 on cpu"),
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
    let message = launch_error(check_args("rmsnorm", &params, &cpu, &[Arg::I32(1)]));
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
    let y = gpu.alloc(DType::F32, 4).unwrap();
    let args = [
        Arg::Buffer(&x),
        Arg::Buffer(&y),
        Arg::I32(4),
        Arg::F32(1e-6),
        Arg::I64(4),
    ];
    let message = launch_error(check_args("rmsnorm", &params(), &gpu, &args));
    assert!(
        message.contains("parameter `x: *bf16`: the buffer is on cpu, the kernel on cuda:0"),
        "{message}"
    );
}
