//! Matrix products: `C = alpha * op(A) @ op(B) + beta * C (+ bias)` on row-major matrices.
//!
//! On the CPU the `gemm` crate runs them (bf16 operands are widened to f32 first); on a GPU
//! cuBLASLt does, on the device's stream, with the bias added in its epilogue.
//!
//! The three products of a linear layer `y = x @ Wᵀ` (x `[T, H]`, W `[O, H]`):
//!
//! ```no_run
//! # use kiln_runtime::{Device, Gemm};
//! # fn f(device: &Device, x: &kiln_runtime::Buffer, w: &kiln_runtime::Buffer,
//! #      y: &mut kiln_runtime::Buffer, dy: &kiln_runtime::Buffer, dx: &mut kiln_runtime::Buffer,
//! #      dw: &mut kiln_runtime::Buffer) -> kiln_runtime::Result<()> {
//! let (t, h, o) = (8, 896, 4864);
//! // forward: y[T, O] = x[T, H] @ W[O, H]ᵀ
//! device.gemm(&Gemm::new(t, o, h).transpose_b(), x, w, &mut *y, None)?;
//! // input gradient: dx[T, H] = dy[T, O] @ W[O, H]
//! device.gemm(&Gemm::new(t, h, o), dy, w, dx, None)?;
//! // weight gradient, accumulated: dW[O, H] += dy[T, O]ᵀ @ x[T, H]
//! device.gemm(&Gemm::new(o, h, t).transpose_a().with_beta(1.0), dy, x, dw, None)?;
//! // a chunk of rows of W: logits[T, 1024] = x[T, H] @ W[1024..2048, :]ᵀ
//! # let logits = y;
//! device.gemm(&Gemm::new(t, 1024, h).transpose_b(), x, w.slice(1024 * h..2048 * h)?, &mut *logits, None)?;
//! # Ok(()) }
//! ```

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cublaslt;

use std::fmt;

use kiln_compiler::DType;

use crate::buffer::{BufferView, BufferViewMut};
use crate::device::{Device, Inner};
use crate::{Error, Result};

/// The shape and scalars of one product `C = alpha * op(A) @ op(B) + beta * C (+ bias)`.
///
/// All matrices are row-major and contiguous, so leading dimensions follow from the shape:
/// A is stored `[m, k]`, or `[k, m]` when `trans_a` (then `op(A) = Aᵀ`); B is stored `[k, n]`,
/// or `[n, k]` when `trans_b`; C is `[m, n]`; the optional bias has `n` elements and is added to
/// every row. Accumulation is in f32 whatever the element types. When `beta` is 0, C is not read
/// (NaN there does not propagate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Rows of `op(A)` and of C.
    pub m: usize,
    /// Columns of `op(B)` and of C.
    pub n: usize,
    /// The inner dimension: columns of `op(A)`, rows of `op(B)`. Must not be 0.
    pub k: usize,
    /// Whether A is stored transposed, `[k, m]`.
    pub trans_a: bool,
    /// Whether B is stored transposed, `[n, k]`.
    pub trans_b: bool,
    /// Scales the product.
    pub alpha: f32,
    /// Scales the old C; 0 overwrites C, 1 accumulates into it.
    pub beta: f32,
}

impl Gemm {
    /// `C = A @ B` with A `[m, k]`, B `[k, n]`: no transposes, `alpha` 1, `beta` 0.
    pub fn new(m: usize, n: usize, k: usize) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// The same product with A stored transposed, `[k, m]`.
    pub fn transpose_a(self) -> Gemm {
        Gemm {
            trans_a: true,
            ..self
        }
    }

    /// The same product with B stored transposed, `[n, k]`.
    pub fn transpose_b(self) -> Gemm {
        Gemm {
            trans_b: true,
            ..self
        }
    }

    /// The same product scaled by `alpha`.
    pub fn with_alpha(self, alpha: f32) -> Gemm {
        Gemm { alpha, ..self }
    }

    /// The same product with `beta * C` added.
    pub fn with_beta(self, beta: f32) -> Gemm {
        Gemm { beta, ..self }
    }

    /// The stored shape of A, `[rows, columns]`.
    pub fn a_shape(&self) -> [usize; 2] {
        if self.trans_a {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        }
    }

    /// The stored shape of B, `[rows, columns]`.
    pub fn b_shape(&self) -> [usize; 2] {
        if self.trans_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        }
    }

    /// The shape of C, `[m, n]`.
    pub fn c_shape(&self) -> [usize; 2] {
        [self.m, self.n]
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Gemm {
            gemm: self.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Gemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |on: bool| if on { "^T" } else { "" };
        write!(
            f,
            "m={} n={} k={} (A{}, B{})",
            self.m,
            self.n,
            self.k,
            t(self.trans_a),
            t(self.trans_b)
        )
    }
}

impl Device {
    /// Whether this device's products give the same bits for the same operands in every run of
    /// a program: always on the CPU; on a GPU unless products are tuned by measurement, which
    /// switches a class of shapes to the fastest algorithm once timed (`KILN_GEMM_TUNE=0` keeps
    /// the heuristic's first pick: the deterministic mode).
    pub fn gemm_reproducible(&self) -> bool {
        match self.inner() {
            Inner::Cpu { .. } => true,
            #[cfg(feature = "cuda")]
            Inner::Cuda(_) => !cublaslt::tune::enabled(),
        }
    }

    /// Computes `c = spec.alpha * op(a) @ op(b) + spec.beta * c (+ bias)` (see [`Gemm`]).
    ///
    /// Operands are views: `&buffer` or [`crate::Buffer::view`] for a whole buffer,
    /// [`crate::Buffer::slice`] for part of one; `c`, which is written, is an exclusive view
    /// (`&mut buffer`, [`crate::Buffer::slice_mut`]). Their lengths must be exactly those of
    /// their shapes. Element
    /// types: `a` and `b` both bf16 with `c` bf16 or f32, or all three f32; `bias` bf16 or f32
    /// (on a GPU, `c`'s type: cuBLASLt has no algorithm for the others).
    /// Every operand must be on this device, and `c` must not overlap another operand.
    /// Violations are [`Error::Gemm`] naming the operand; nothing runs.
    ///
    /// On a GPU the product is queued on the device's stream, after all work queued before it.
    ///
    /// An output that overlaps an input cannot even be written down:
    ///
    /// ```compile_fail
    /// # use kiln_runtime::{Device, Gemm};
    /// # let device = Device::cpu();
    /// let mut c = device.alloc(kiln_compiler::DType::F32, 4).unwrap();
    /// device.gemm(&Gemm::new(2, 2, 2), &c, &c, &mut c, None).unwrap(); // c read and written
    /// ```
    pub fn gemm<'a, 'b, 'c>(
        &self,
        spec: &Gemm,
        a: impl Into<BufferView<'a>>,
        b: impl Into<BufferView<'b>>,
        c: impl Into<BufferViewMut<'c>>,
        bias: Option<BufferView<'_>>,
    ) -> Result<()> {
        let c = c.into();
        // From here `c` is read through a shared view; the exclusive borrow held by `c_mut`
        // guarantees no one else reads or writes it meanwhile.
        let (a, b, c_mut) = (a.into(), b.into(), c);
        let c = c_mut.as_view();
        check(self, spec, &a, &b, &c, bias.as_ref())?;
        if spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        let name = || {
            let t = |x: bool| if x { "ᵀ" } else { "" };
            format!(
                "gemm {}x{}x{} A{} B{}{}",
                spec.m,
                spec.n,
                spec.k,
                t(spec.trans_a),
                t(spec.trans_b),
                if spec.beta != 0.0 { " +C" } else { "" }
            )
        };
        match self.inner() {
            Inner::Cpu { .. } => crate::profile::timed(name, || cpu::run(spec, a, b, c, bias)),
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => crate::profile::timed_gpu(d.stream(), name, || {
                cublaslt::run(d, spec, a, b, c, bias)
            }),
        }
    }
}

/// Checks devices, element types, lengths and overlap before anything runs.
fn check(
    device: &Device,
    spec: &Gemm,
    a: &BufferView<'_>,
    b: &BufferView<'_>,
    c: &BufferView<'_>,
    bias: Option<&BufferView<'_>>,
) -> Result<()> {
    let operands = [
        ("A", Some(a)),
        ("B", Some(b)),
        ("C", Some(c)),
        ("bias", bias),
    ];
    let operands = operands
        .iter()
        .filter_map(|(name, view)| view.map(|v| (*name, v)));
    for (name, view) in operands.clone() {
        if !view.device().same_device(device) {
            return Err(spec.error(format!(
                "{name} is on {}, the gemm runs on {device}",
                view.device()
            )));
        }
    }

    let float = |d: DType| matches!(d, DType::Bf16 | DType::F32);
    let (ta, tb, tc) = (a.dtype(), b.dtype(), c.dtype());
    if ta != tb || !float(ta) {
        return Err(spec.error(format!(
            "A and B must both be bf16 or both f32, got {ta} and {tb}"
        )));
    }
    if !float(tc) || (ta == DType::F32 && tc != DType::F32) {
        return Err(spec.error(format!(
            "C must be bf16 or f32 for {ta} A and B (f32 for f32 A and B), got {tc}"
        )));
    }
    if let Some(bias) = bias.filter(|bias| !float(bias.dtype())) {
        return Err(spec.error(format!("bias must be bf16 or f32, got {}", bias.dtype())));
    }

    if spec.k == 0 {
        return Err(spec.error("k = 0 (an empty inner dimension) is not supported"));
    }
    let expect = [
        ("A", spec.a_shape()),
        ("B", spec.b_shape()),
        ("C", spec.c_shape()),
        ("bias", [1, spec.n]),
    ];
    for ((name, view), (_, [rows, cols])) in operands.clone().zip(expect) {
        let want = rows
            .checked_mul(cols)
            .ok_or_else(|| spec.error(format!("{name} [{rows}, {cols}] overflows usize")))?;
        if view.len() != want {
            return Err(spec.error(format!(
                "{name} must have {want} elements ([{rows}, {cols}]), the view has {}",
                view.len()
            )));
        }
    }

    for (name, view) in operands.filter(|(name, _)| *name != "C") {
        if view.overlaps(c) {
            return Err(spec.error(format!("C overlaps {name} ({c:?} and {view:?})")));
        }
    }
    Ok(())
}
