//! Launch arguments and their checking against a kernel's parameters.
//!
//! Every launch is checked before anything runs: the argument count, each argument's kind
//! (buffer or scalar), a buffer's element type and device, a scalar's exact type. A mismatch is
//! an [`crate::Error::Launch`] naming the kernel and the parameter.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::DType;

use crate::buffer::Buffer;
use crate::device::Device;
use crate::{Error, Result};

/// One argument of a launch, matching one kernel parameter.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    /// For a pointer parameter (`*T` or `*mut T`): a buffer of `T` on the kernel's device.
    Buffer(&'a Buffer),
    /// For an `i32` parameter.
    I32(i32),
    /// For an `i64` parameter.
    I64(i64),
    /// For an `f32` parameter.
    F32(f32),
}

impl Arg<'_> {
    fn describe(&self) -> String {
        match self {
            Arg::Buffer(b) => format!("a buffer of {} on {}", b.dtype(), b.device()),
            Arg::I32(_) => "an i32".into(),
            Arg::I64(_) => "an i64".into(),
            Arg::F32(_) => "an f32".into(),
        }
    }

    /// The argument as the kernel ABI passes it: an address, or a scalar's bits zero-extended.
    pub(crate) fn bits(&self) -> u64 {
        match *self {
            Arg::Buffer(b) => b.address(),
            Arg::I32(v) => v as u32 as u64,
            Arg::I64(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

fn describe_param(p: &Param) -> String {
    match p.kind {
        ParamKind::Ptr { pointee, mutable } => {
            format!(
                "`{}: *{}{pointee}`",
                p.name,
                if mutable { "mut " } else { "" }
            )
        }
        ParamKind::Scalar(d) => format!("`{}: {d}`", p.name),
    }
}

/// Checks `args` against the parameters of kernel `kernel` launched on `device`.
pub fn check_args(kernel: &str, params: &[Param], device: &Device, args: &[Arg<'_>]) -> Result<()> {
    if args.len() != params.len() {
        let list = params
            .iter()
            .map(describe_param)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::launch(
            kernel,
            format!(
                "expects {} argument(s) ({list}), got {}",
                params.len(),
                args.len()
            ),
        ));
    }
    for (i, (param, arg)) in params.iter().zip(args).enumerate() {
        let mismatch = |why: String| {
            Error::launch(
                kernel,
                format!(
                    "argument {i} for parameter {}: {why}",
                    describe_param(param)
                ),
            )
        };
        match (param.kind, arg) {
            (ParamKind::Ptr { pointee, .. }, Arg::Buffer(b)) => {
                if b.dtype() != pointee {
                    return Err(mismatch(format!(
                        "expected a buffer of {pointee}, got a buffer of {}",
                        b.dtype()
                    )));
                }
                if !b.device().same_device(device) {
                    return Err(mismatch(format!(
                        "the buffer is on {}, the kernel on {device}",
                        b.device()
                    )));
                }
            }
            (ParamKind::Ptr { pointee, .. }, other) => {
                return Err(mismatch(format!(
                    "expected a buffer of {pointee}, got {}",
                    other.describe()
                )))
            }
            (ParamKind::Scalar(d), arg) => {
                let fits = matches!(
                    (d, arg),
                    (DType::I32, Arg::I32(_))
                        | (DType::I64, Arg::I64(_))
                        | (DType::F32, Arg::F32(_))
                );
                if !fits {
                    let expected = match d {
                        DType::I32 | DType::I64 | DType::F32 => format!("expected an {d}"),
                        _ => format!("{d} scalar parameters cannot be passed at launch (use i32, i64 or f32)"),
                    };
                    return Err(mismatch(format!("{expected}, got {}", arg.describe())));
                }
            }
        }
    }
    Ok(())
}

/// The arguments in the kernel ABI: one `u64` each.
pub(crate) fn pack(args: &[Arg<'_>]) -> Vec<u64> {
    args.iter().map(Arg::bits).collect()
}
