//! Which tile computations run four elements at a time, decided before any code is emitted.
//!
//! A loop over a tile is vectorised when every value it reads has a [`Form`] over a *group*:
//! four consecutive row-major elements starting at a multiple of four. Tiles have power-of-two
//! sizes, so groups never straddle the end of a tile. Values take one of three forms:
//!
//! - *uniform*: one scalar in every lane (scalars, splats, constants, column broadcasts);
//! - *sequence*: lane `k` is `base + k` (integers) or `base + k * size` (pointers): ranges and
//!   offsets derived from them, kept symbolic so that contiguous pointers are recognised;
//! - *lanes*: a vector register (`f32x4`, or `i32x4` for `i32`, bool masks and 16-bit float bits).
//!
//! Anything else (`i64` or pointer arithmetic that is not a sequence, gathers, `trans`, integer
//! division, bool tiles in memory) leaves the loop to the scalar path.

use super::plan::{plan, Plan};
use crate::ir::{BinaryOp, DefUse, Elem, Kernel, Op, UnaryOp, Value};
use crate::types::DType;
use cranelift_codegen::ir::{types, Type as ClType};
use std::cell::RefCell;
use std::collections::HashMap;

/// Elements per group.
pub(super) const LANES: u64 = 4;

/// How a value looks across one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    Uniform,
    /// `exact`: the lanes `base + k` provably do not wrap around the integer type, so widening
    /// the sequence to `i64` keeps it a sequence (true for ranges, which start at the group's
    /// index).
    Seq {
        exact: bool,
    },
    Lanes,
}

/// The register type that holds a group of `e` as lanes, if any.
pub(super) fn lane_type(e: Elem) -> Option<ClType> {
    match e.dtype()? {
        DType::F32 => Some(types::F32X4),
        DType::I32 | DType::Bool | DType::Bf16 | DType::F16 => Some(types::I32X4),
        DType::I64 => None,
    }
}

/// Unary ops with a four-lane lowering, by operand type.
fn unary_ok(op: UnaryOp, d: DType) -> bool {
    match d {
        DType::F32 | DType::Bf16 | DType::F16 => op != UnaryOp::Not,
        DType::I32 => matches!(op, UnaryOp::Neg | UnaryOp::Not | UnaryOp::Abs),
        DType::Bool => op == UnaryOp::Not,
        DType::I64 => false,
    }
}

/// Binary ops with a four-lane lowering, by operand type; `uniform_rhs` when the right operand
/// is the same in every lane (vector shifts take one amount for all lanes).
fn binary_ok(op: BinaryOp, d: DType, uniform_rhs: bool) -> bool {
    use BinaryOp::*;
    match d {
        DType::F32 | DType::Bf16 | DType::F16 => {
            matches!(op, Add | Sub | Mul | Div | Min | Max | Rem)
        }
        DType::I32 => match op {
            Add | Sub | Mul | Min | Max | And | Or | Xor => true,
            Shl | Shr => uniform_rhs,
            Div | Rem => false,
        },
        DType::Bool => matches!(op, And | Or | Xor | Min | Max),
        DType::I64 => false,
    }
}

/// What the CPU backend decides before emitting code: which tiles are fused into their users
/// (see `plan`), and the four-lane form of every value.
pub(super) struct LanePlan<'a> {
    pub(super) k: &'a Kernel,
    pub(super) du: DefUse<'a>,
    pub(super) fusion: Plan,
    /// The form of each virtual value, once asked for.
    forms: RefCell<HashMap<Value, Option<Form>>>,
}

impl<'a> LanePlan<'a> {
    pub(super) fn new(k: &'a Kernel) -> LanePlan<'a> {
        let du = DefUse::new(&k.body);
        LanePlan {
            fusion: plan(k, &du),
            k,
            du,
            forms: RefCell::new(HashMap::new()),
        }
    }

    /// Whether `v` is computed inside the loops of its users rather than stored.
    pub(super) fn is_virtual(&self, v: Value) -> bool {
        self.fusion.is_virtual(v)
    }

    /// The form of `v` over a group, or `None` if it cannot be computed four lanes at a time.
    /// Scalars are uniform; stored tiles (in stack slots) are read as lanes where their
    /// element type allows.
    pub(super) fn form(&self, v: Value) -> Option<Form> {
        let ty = self.k.ty(v);
        if ty.is_scalar() {
            return Some(Form::Uniform);
        }
        if !self.fusion.is_virtual(v) {
            return self.slot_lanes_ok(v).then_some(Form::Lanes);
        }
        // A virtual value's form follows from its operands', which are all defined before it is
        // asked for; remembering it keeps deep expressions linear (each level asks several
        // times).
        if let Some(&form) = self.forms.borrow().get(&v) {
            return form;
        }
        let form = self.op_form(self.du.def_op(v)?, v);
        self.forms.borrow_mut().insert(v, form);
        form
    }

    /// True when a slot of `v`'s elements can be read and written four lanes at a time.
    pub(super) fn slot_lanes_ok(&self, v: Value) -> bool {
        let e = self.k.ty(v).elem;
        lane_type(e).is_some() && e != Elem::Scalar(DType::Bool)
    }

    /// True when `v` can be turned into lanes of its element type.
    pub(super) fn lanes_ok(&self, v: Value) -> bool {
        let e = self.k.ty(v).elem;
        match self.form(v) {
            Some(Form::Uniform | Form::Lanes) => lane_type(e).is_some(),
            Some(Form::Seq { .. }) => e == Elem::Scalar(DType::I32),
            None => false,
        }
    }

    /// The form of the result `r` of `op`.
    pub(super) fn op_form(&self, op: &Op, r: Value) -> Option<Form> {
        let rty = self.k.ty(r);
        let uniform = |vs: &[Value]| vs.iter().all(|&v| self.form(v) == Some(Form::Uniform));
        let lanes = |vs: &[Value]| {
            (lane_type(rty.elem).is_some() && vs.iter().all(|&v| self.lanes_ok(v)))
                .then_some(Form::Lanes)
        };
        let dtype = |v: Value| self.k.ty(v).dtype();
        match op {
            Op::Const(_) | Op::Splat(_) => Some(Form::Uniform),
            Op::Range(_) => Some(Form::Seq { exact: true }),
            Op::Reshape(x) => self.form(*x),
            Op::Broadcast(x) => {
                let (src, dst) = (&self.k.ty(*x).shape, &rty.shape);
                let (s, d) = (*src.last()?, *dst.last()?);
                if u64::from(d) % LANES != 0 {
                    None
                } else if s == d {
                    self.form(*x)
                } else {
                    // A group lies in one row, so it reads one source element.
                    Some(Form::Uniform)
                }
            }
            Op::Unary(u, x) => {
                if uniform(&[*x]) {
                    return Some(Form::Uniform);
                }
                unary_ok(*u, dtype(*x)?).then(|| lanes(&[*x]))?
            }
            Op::Binary(o, a, b) => {
                if uniform(&[*a, *b]) {
                    return Some(Form::Uniform);
                }
                let d = dtype(*a)?;
                let seq = |v| matches!(self.form(v), Some(Form::Seq { .. }));
                let int = matches!(d, DType::I32 | DType::I64);
                let shifted = match o {
                    BinaryOp::Add => (seq(*a) && uniform(&[*b])) || (uniform(&[*a]) && seq(*b)),
                    BinaryOp::Sub => seq(*a) && uniform(&[*b]),
                    _ => false,
                };
                if int && shifted {
                    // The offset may carry the lanes across the type's range.
                    return Some(Form::Seq {
                        exact: d == DType::I64,
                    });
                }
                binary_ok(*o, d, uniform(&[*b])).then(|| lanes(&[*a, *b]))?
            }
            Op::Cmp(_, a, b) => {
                if uniform(&[*a, *b]) {
                    return Some(Form::Uniform);
                }
                match dtype(*a)? {
                    DType::Bool => None,
                    DType::I64 => {
                        let (fa, fb) = (self.form(*a)?, self.form(*b)?);
                        matches!(
                            (fa, fb),
                            (Form::Seq { .. }, Form::Uniform) | (Form::Uniform, Form::Seq { .. })
                        )
                        .then_some(Form::Lanes)
                    }
                    _ => lanes(&[*a, *b]),
                }
            }
            Op::Select(c, a, b) => {
                if uniform(&[*c, *a, *b]) {
                    return Some(Form::Uniform);
                }
                lanes(&[*c, *a, *b])
            }
            Op::Fma(a, b, c) => {
                if uniform(&[*a, *b, *c]) {
                    return Some(Form::Uniform);
                }
                (dtype(*a)? != DType::Bool).then(|| lanes(&[*a, *b, *c]))?
            }
            Op::Cast(x) => {
                let (from, to) = (dtype(*x)?, rty.dtype()?);
                match self.form(*x)? {
                    Form::Uniform => Some(Form::Uniform),
                    Form::Seq { exact } => match (from, to) {
                        (DType::I32, DType::I64) if exact => Some(Form::Seq { exact: true }),
                        (DType::I64, DType::I32) => Some(Form::Seq { exact: false }),
                        (DType::I32, _) => lanes(&[*x]),
                        _ => None,
                    },
                    Form::Lanes => lanes(&[*x]),
                }
            }
            Op::PtrAdd(p, off) => match (self.form(*p)?, self.form(*off)?) {
                (Form::Uniform, Form::Uniform) => Some(Form::Uniform),
                (Form::Uniform, Form::Seq { exact }) if exact || dtype(*off)? == DType::I64 => {
                    Some(Form::Seq { exact: true })
                }
                (Form::Seq { .. }, Form::Uniform) => Some(Form::Seq { exact: true }),
                _ => None,
            },
            Op::Load { ptr, mask, other } => {
                let contiguous = matches!(self.form(*ptr)?, Form::Seq { .. });
                let mask_ok = mask.is_none_or(|m| self.lanes_ok(m));
                let other_ok = other.is_none_or(|o| self.lanes_ok(o));
                (contiguous && self.slot_lanes_ok(r) && mask_ok && other_ok).then_some(Form::Lanes)
            }
            _ => None,
        }
    }

    /// True when storing `value` through `ptr` under `mask` can go four lanes at a time.
    pub(super) fn store_vectorizes(&self, ptr: Value, value: Value, mask: Option<Value>) -> bool {
        self.k.ty(ptr).numel() >= LANES
            && matches!(self.form(ptr), Some(Form::Seq { .. }))
            && self.slot_lanes_ok(value)
            && self.lanes_ok(value)
            && mask.is_none_or(|m| self.lanes_ok(m))
    }
}

impl super::lower::Lowerer<'_, '_> {
    /// See [`LanePlan::form`].
    pub(super) fn form(&self, v: Value) -> Option<Form> {
        self.facts.form(v)
    }

    /// See [`LanePlan::op_form`].
    pub(super) fn op_form(&self, op: &Op, r: Value) -> Option<Form> {
        self.facts.op_form(op, r)
    }

    /// See [`LanePlan::lanes_ok`].
    pub(super) fn lanes_ok(&self, v: Value) -> bool {
        self.facts.lanes_ok(v)
    }

    /// See [`LanePlan::slot_lanes_ok`].
    pub(super) fn slot_lanes_ok(&self, v: Value) -> bool {
        self.facts.slot_lanes_ok(v)
    }

    /// See [`LanePlan::store_vectorizes`].
    pub(super) fn store_vectorizes(&self, ptr: Value, value: Value, mask: Option<Value>) -> bool {
        self.facts.store_vectorizes(ptr, value, mask)
    }
}
