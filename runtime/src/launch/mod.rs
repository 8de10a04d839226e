//! Launch arguments, bound to a kernel's parameters by name, and their checking.
//!
//! A launch names every argument ([`Args`]); binding checks it against the kernel's signature
//! before anything runs: every parameter given exactly once and no unknown name, pointers
//! given as buffers of their element type on the kernel's device (read-only `*T` parameters as
//! shared [`BufferView`]s, `*mut T` parameters as exclusive [`BufferViewMut`]s), scalars of
//! their exact type. A mismatch is an [`crate::Error::Launch`] naming the kernel and the
//! parameter.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::DType;

use crate::buffer::{BufferView, BufferViewMut};
use crate::cache::Specialization;
use crate::device::Device;
use crate::{Error, Result};

/// The arguments of a launch, by parameter name.
///
/// ```
/// # use kiln_runtime::{Args, Device};
/// # fn main() -> kiln_runtime::Result<()> {
/// # let device = Device::cpu();
/// let x = device.upload(&[1.0f32; 4])?;
/// let mut y = device.upload(&[0.0f32; 4])?;
/// let args = Args::new()
///     .input("x", &x)      // read by the kernel: shared
///     .output("y", &mut y) // written by the kernel: exclusive
///     .i32("n", 4)
///     .f32("alpha", 3.0);
/// # let _ = args;
/// # Ok(()) }
/// ```
///
/// The borrows last as long as the `Args`, so a buffer the kernel writes can be neither read
/// nor written elsewhere meanwhile, and cannot be passed as an input of the same launch:
///
/// ```compile_fail
/// # use kiln_runtime::{Args, Device};
/// # let device = Device::cpu();
/// let mut y = device.upload(&[0.0f32; 4]).unwrap();
/// let args = Args::new().input("x", &y).output("y", &mut y); // y both read and written
/// # let _ = args;
/// ```
///
/// ```compile_fail
/// # use kiln_runtime::{Args, Device};
/// # let device = Device::cpu();
/// let mut y = device.upload(&[0.0f32; 4]).unwrap();
/// let args = Args::new().output("y", &mut y);
/// let seen: Vec<f32> = y.download().unwrap(); // read while a launch may write it
/// # let _ = (args, seen);
/// ```
///
/// ```compile_fail
/// # use kiln_runtime::{Args, Device};
/// # let device = Device::cpu();
/// let y = device.upload(&[0.0f32; 4]).unwrap();
/// let args = Args::new().output("y", &y); // an output needs exclusive access
/// # let _ = args;
/// ```
///
/// ```compile_fail
/// # use kiln_runtime::{Args, Device};
/// # let device = Device::cpu();
/// let mut y = device.upload(&[0.0f32; 4]).unwrap();
/// std::thread::scope(|s| {
///     let args = Args::new().output("y", &mut y);
///     s.spawn(|| y.download::<f32>()); // another thread reads while the launch borrows it
///     drop(args);
/// });
/// ```
#[derive(Debug, Default)]
pub struct Args<'a> {
    named: Vec<(&'a str, ArgValue<'a>)>,
}

/// One argument's value.
#[derive(Debug)]
enum ArgValue<'a> {
    Input(BufferView<'a>),
    Output(BufferViewMut<'a>),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl<'a> Args<'a> {
    /// No arguments yet.
    pub fn new() -> Args<'a> {
        Args::default()
    }

    fn with(mut self, name: &'a str, value: ArgValue<'a>) -> Args<'a> {
        self.named.push((name, value));
        self
    }

    /// A buffer (or a view of one) the kernel reads, for a `*T` parameter.
    pub fn input(self, name: &'a str, buffer: impl Into<BufferView<'a>>) -> Args<'a> {
        self.with(name, ArgValue::Input(buffer.into()))
    }

    /// A buffer (or a view of one) the kernel writes, for a `*mut T` parameter: borrowed
    /// exclusively for as long as the arguments live.
    pub fn output(self, name: &'a str, buffer: impl Into<BufferViewMut<'a>>) -> Args<'a> {
        self.with(name, ArgValue::Output(buffer.into()))
    }

    /// A buffer the kernel reads and updates in place (AdamW's weights and moments, RoPE's
    /// queries and keys), for a `*mut T` parameter. The same exclusive borrow as
    /// [`Args::output`]; the name says that the old contents matter.
    pub fn in_out(self, name: &'a str, buffer: impl Into<BufferViewMut<'a>>) -> Args<'a> {
        self.output(name, buffer)
    }

    /// An `i32` scalar.
    pub fn i32(self, name: &'a str, value: i32) -> Args<'a> {
        self.with(name, ArgValue::I32(value))
    }

    /// An `i64` scalar.
    pub fn i64(self, name: &'a str, value: i64) -> Args<'a> {
        self.with(name, ArgValue::I64(value))
    }

    /// An `f32` scalar.
    pub fn f32(self, name: &'a str, value: f32) -> Args<'a> {
        self.with(name, ArgValue::F32(value))
    }

    fn get(&self, name: &str) -> Option<&ArgValue<'a>> {
        self.named.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// What these arguments allow the code generator to assume for a kernel with `params`
    /// (parameters not given are assumed nothing of).
    pub fn specialization(&self, params: &[Param]) -> Specialization {
        let divisible_by_16 = params
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, p)| self.get(&p.name).is_some_and(ArgValue::divisible_by_16))
            .fold(0u64, |mask, (i, _)| mask | 1 << i);
        Specialization { divisible_by_16 }
    }

    /// Checks the arguments against the parameters of kernel `kernel` on `device`, as a launch
    /// does, without launching anything.
    pub fn check(&self, kernel: &str, params: &[Param], device: &Device) -> Result<()> {
        self.bind(kernel, params, device).map(|_| ())
    }

    /// The arguments in `params`' order, checked for kernel `kernel` on `device`.
    pub(crate) fn bind(&self, kernel: &str, params: &[Param], device: &Device) -> Result<Bound> {
        let refuse = |message: String| Error::launch(kernel, message);
        let list = || {
            params
                .iter()
                .map(describe_param)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, (name, _)) in self.named.iter().enumerate() {
            if !params.iter().any(|p| p.name == *name) {
                return Err(refuse(format!(
                    "no parameter named `{name}`; the parameters are {}",
                    list()
                )));
            }
            if self.named[..i].iter().any(|(n, _)| n == name) {
                return Err(refuse(format!("parameter `{name}` is given twice")));
            }
        }
        let mut bound = Bound {
            words: Vec::with_capacity(params.len()),
            bounds: Vec::with_capacity(params.len()),
            specialization: self.specialization(params),
        };
        for param in params {
            let value = self.get(&param.name).ok_or_else(|| {
                refuse(format!(
                    "parameter {} is not given; the parameters are {}",
                    describe_param(param),
                    list()
                ))
            })?;
            let mismatch =
                |why: String| refuse(format!("parameter {}: {why}", describe_param(param)));
            let (word, len) =
                match (param.kind, value) {
                    (ParamKind::Ptr { pointee, mutable }, value) => {
                        let view =
                            match (mutable, value) {
                                (false, ArgValue::Input(v)) => *v,
                                (true, ArgValue::Output(v)) => v.as_view(),
                                (false, ArgValue::Output(_)) => return Err(mismatch(
                                    "the kernel only reads it: pass it with `input`, not `output`"
                                        .into(),
                                )),
                                (true, ArgValue::Input(_)) => return Err(mismatch(
                                    "the kernel writes it: pass it with `output` (or `in_out`), \
                                 an exclusive borrow"
                                        .into(),
                                )),
                                (_, other) => {
                                    return Err(mismatch(format!(
                                        "expected a buffer of {pointee}, got {}",
                                        other.describe()
                                    )))
                                }
                            };
                        if view.dtype() != pointee {
                            return Err(mismatch(format!(
                                "expected a buffer of {pointee}, got a buffer of {}",
                                view.dtype()
                            )));
                        }
                        if !view.device().same_device(device) {
                            return Err(mismatch(format!(
                                "the buffer is on {}, the kernel on {device}",
                                view.device()
                            )));
                        }
                        (
                            view.address(),
                            view.len() as u64 * pointee.size_bytes() as u64,
                        )
                    }
                    (ParamKind::Scalar(d), value) => {
                        let word = match (d, value) {
                            (DType::I32, ArgValue::I32(v)) => *v as u32 as u64,
                            (DType::I64, ArgValue::I64(v)) => *v as u64,
                            (DType::F32, ArgValue::F32(v)) => v.to_bits() as u64,
                            (DType::I32 | DType::I64 | DType::F32, other) => {
                                return Err(mismatch(format!(
                                    "expected an {d}, got {}",
                                    other.describe()
                                )))
                            }
                            _ => {
                                return Err(mismatch(format!(
                                    "{d} scalar parameters cannot be passed at launch (use i32, \
                                 i64 or f32)"
                                )))
                            }
                        };
                        (word, 0)
                    }
                };
            bound.words.push(word);
            bound.bounds.push(len);
        }
        Ok(bound)
    }
}

impl ArgValue<'_> {
    fn describe(&self) -> String {
        match self {
            ArgValue::Input(b) => format!("an input buffer of {} on {}", b.dtype(), b.device()),
            ArgValue::Output(b) => format!("an output buffer of {} on {}", b.dtype(), b.device()),
            ArgValue::I32(_) => "an i32".into(),
            ArgValue::I64(_) => "an i64".into(),
            ArgValue::F32(_) => "an f32".into(),
        }
    }

    fn divisible_by_16(&self) -> bool {
        match self {
            ArgValue::Input(v) => v.address() % 16 == 0,
            ArgValue::Output(v) => v.address() % 16 == 0,
            ArgValue::I32(v) => v % 16 == 0,
            ArgValue::I64(v) => v % 16 == 0,
            ArgValue::F32(_) => false,
        }
    }
}

/// Arguments bound to a kernel's parameters: one word each in the kernel ABI (an address, or a
/// scalar's bits zero-extended), the byte length of each pointer's buffer (0 for scalars), and
/// what the values allow a kernel to assume.
pub(crate) struct Bound {
    pub words: Vec<u64>,
    pub bounds: Vec<u64>,
    specialization: Specialization,
}

impl Bound {
    /// Whether these arguments satisfy what a kernel compiled for `assumed` relies on.
    pub(crate) fn satisfies(&self, assumed: &Specialization) -> bool {
        assumed.divisible_by_16 & !self.specialization.divisible_by_16 == 0
    }
}

pub(crate) fn describe_param(p: &Param) -> String {
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
