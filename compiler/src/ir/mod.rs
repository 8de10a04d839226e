//! The tile IR: SSA over tiles, with structured control flow.
//!
//! A [`Kernel`] is one entry point, fully specialised: every compile-time constant has been
//! substituted, every tile shape is known, helper functions are inlined, broadcasts are explicit.
//! Values are tiles: a shape (possibly empty, for scalars) and an element type (a [`DType`] or a
//! pointer to one). Tiles are row-major; every dimension is a power of two.
//!
//! Control flow is structured: [`Op::For`] and [`Op::If`] own nested [`Block`]s that end in
//! [`Op::Yield`]; values defined in a block are visible in the blocks it contains.
//!
//! ## Semantics every backend implements
//! - Integers are two's complement; `div`/`rem` are signed and truncate toward zero. A lane whose
//!   divisor is zero produces an unspecified value but never traps (masked-off lanes compute too).
//!   Shift amounts are taken modulo the bit width.
//! - `min`/`max` on floats return NaN if either operand is NaN.
//! - `cast`: float to narrower float rounds to nearest, ties to even; float to int truncates toward
//!   zero and saturates, NaN becomes 0; int to float rounds to nearest even; int to int sign-extends
//!   or truncates; to `bool` is `!= 0`; from `bool` is 0 or 1.
//! - Arithmetic on `bf16`/`f16` tiles is computed in `f32` and rounded back to nearest even.
//! - `load` with a mask reads only where the mask is true and yields `other` elsewhere (zero when
//!   there is no `other`); `store` and `atomic_add` with a mask write only where it is true.
//! - `exp`, `log`, ... may use hardware approximations whose error is within a few ulp of f32.
//! - A `for` whose step is 0 or negative (known only at run time: the checker refuses such a
//!   constant) runs its body zero times: its results are its initial values.

mod builder;
mod defuse;
mod parser;
mod printer;
mod provenance;
mod verify;

pub use builder::Builder;
pub use defuse::{DefUse, Site, Use, UseKind};
pub use parser::{parse_kernel, IrParseError};
pub use printer::{print_kernel, print_kernel_annotated, value_names, Annotator};
pub use provenance::{ParamSet, Provenance};
pub use verify::{verify, VerifyError};

use crate::types::DType;
use std::fmt;

/// An SSA value: an index into [`Kernel::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub u32);

impl Value {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The element of a tile: a number type or a pointer to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    Scalar(DType),
    Ptr(DType),
}

impl Elem {
    pub fn dtype(self) -> Option<DType> {
        match self {
            Elem::Scalar(d) => Some(d),
            Elem::Ptr(_) => None,
        }
    }

    pub fn pointee(self) -> Option<DType> {
        match self {
            Elem::Ptr(d) => Some(d),
            Elem::Scalar(_) => None,
        }
    }
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elem::Scalar(d) => write!(f, "{d}"),
            Elem::Ptr(d) => write!(f, "*{d}"),
        }
    }
}

/// The type of a value: element type and shape. An empty shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    pub elem: Elem,
    pub shape: Vec<u32>,
}

impl Type {
    pub fn scalar(d: DType) -> Type {
        Type {
            elem: Elem::Scalar(d),
            shape: vec![],
        }
    }

    pub fn tile(d: DType, shape: &[u32]) -> Type {
        Type {
            elem: Elem::Scalar(d),
            shape: shape.to_vec(),
        }
    }

    pub fn ptr(d: DType, shape: &[u32]) -> Type {
        Type {
            elem: Elem::Ptr(d),
            shape: shape.to_vec(),
        }
    }

    pub fn is_scalar(&self) -> bool {
        self.shape.is_empty()
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    pub fn with_shape(&self, shape: &[u32]) -> Type {
        Type {
            elem: self.elem,
            shape: shape.to_vec(),
        }
    }

    pub fn with_dtype(&self, d: DType) -> Type {
        Type {
            elem: Elem::Scalar(d),
            shape: self.shape.clone(),
        }
    }

    pub fn dtype(&self) -> Option<DType> {
        self.elem.dtype()
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shape.is_empty() {
            return write!(f, "{}", self.elem);
        }
        f.write_str("<")?;
        for d in &self.shape {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.elem)
    }
}

/// A kernel parameter as the launcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A device pointer to elements of this type; `mutable` if the kernel may write through it.
    Ptr { pointee: DType, mutable: bool },
    /// A scalar passed by value.
    Scalar(DType),
}

/// A compile-time constant's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConstValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An element type, the value of a type parameter (`<T: type = bf16>`). It specialises a
    /// kernel but never appears as an operand: the checker substitutes it where `T` is written.
    DType(DType),
}

impl From<DType> for ConstValue {
    fn from(d: DType) -> ConstValue {
        ConstValue::DType(d)
    }
}

impl From<i32> for ConstValue {
    fn from(v: i32) -> ConstValue {
        ConstValue::Int(v.into())
    }
}

impl From<i64> for ConstValue {
    fn from(v: i64) -> ConstValue {
        ConstValue::Int(v)
    }
}

impl From<u32> for ConstValue {
    fn from(v: u32) -> ConstValue {
        ConstValue::Int(v.into())
    }
}

impl From<f32> for ConstValue {
    fn from(v: f32) -> ConstValue {
        ConstValue::Float(v.into())
    }
}

impl From<f64> for ConstValue {
    fn from(v: f64) -> ConstValue {
        ConstValue::Float(v)
    }
}

impl From<bool> for ConstValue {
    fn from(v: bool) -> ConstValue {
        ConstValue::Bool(v)
    }
}

impl fmt::Display for ConstValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstValue::Int(v) => write!(f, "{v}"),
            ConstValue::Float(v) => {
                if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
                    write!(f, "{v:.1}")
                } else {
                    write!(f, "{v:e}")
                }
            }
            ConstValue::Bool(v) => write!(f, "{v}"),
            ConstValue::DType(d) => write!(f, "{d}"),
        }
    }
}

/// One specialised kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    /// The compile-time constants it was specialised with, in declaration order.
    pub consts: Vec<(String, ConstValue)>,
    /// Run-time parameters; `body.args[i]` is the value of `params[i]` (a scalar value whose type
    /// is the scalar or the pointer).
    pub params: Vec<Param>,
    pub body: Block,
    /// The type of every value, indexed by [`Value`].
    pub values: Vec<Type>,
}

impl Kernel {
    pub fn ty(&self, v: Value) -> &Type {
        &self.values[v.index()]
    }
}

/// A straight-line list of instructions with arguments (the entry block's arguments are the
/// kernel parameters; a `for` body's are the induction variable then the carried values).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Block {
    pub args: Vec<Value>,
    pub insts: Vec<Inst>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Inst {
    pub results: Vec<Value>,
    pub op: Op,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    /// Logical not on `bool`, bitwise not on integers.
    Not,
    Abs,
    Exp,
    Exp2,
    Log,
    Log2,
    Sqrt,
    Rsqrt,
    Sigmoid,
    Tanh,
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Min,
    Max,
    /// Logical on `bool`, bitwise on integers.
    And,
    Or,
    Xor,
    Shl,
    /// Arithmetic shift right.
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpPred {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// Index (i32) of the largest element; the first one on ties.
    Argmax,
}

/// An operation. Result types live in [`Kernel::values`]; where an op's result shape or dtype is
/// not implied by its operands (splat, broadcast, reshape, cast, const) the result type says it.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A constant, splatted to the result's shape.
    Const(ConstValue),
    /// The program's index along grid axis 0, 1 or 2 (i32).
    ProgramId(u8),
    /// The grid's size along an axis (i32).
    NumPrograms(u8),
    /// `<N x i32>` holding 0, 1, ..., N-1.
    Range(u32),
    /// A scalar copied to every element of the result.
    Splat(Value),
    /// Dimensions of size 1 repeated to the result's shape (same rank).
    Broadcast(Value),
    /// Same elements, row-major, in the result's shape.
    Reshape(Value),
    /// A 2-D tile transposed.
    Trans(Value),
    Unary(UnaryOp, Value),
    Binary(BinaryOp, Value, Value),
    /// Elementwise comparison, result `bool`.
    Cmp(CmpPred, Value, Value),
    /// `cond ? a : b` elementwise.
    Select(Value, Value, Value),
    /// `a * b + c` with a single rounding.
    Fma(Value, Value, Value),
    /// Conversion to the result's dtype (rounding rules in the module docs).
    Cast(Value),
    /// `ptr + offset` elementwise, the offset counted in elements (an i32 or i64 tile).
    PtrAdd(Value, Value),
    Load {
        ptr: Value,
        mask: Option<Value>,
        other: Option<Value>,
    },
    Store {
        ptr: Value,
        value: Value,
        mask: Option<Value>,
    },
    /// Atomically adds `value` to memory (f32 or i32), no result.
    AtomicAdd {
        ptr: Value,
        value: Value,
        mask: Option<Value>,
    },
    /// Reduction along `axis`, which is removed from the shape.
    Reduce {
        op: ReduceOp,
        value: Value,
        axis: u32,
    },
    /// `acc + a @ b` for `a: <M x K>`, `b: <K x N>`, `acc: <M x N x f32>`.
    Dot {
        a: Value,
        b: Value,
        acc: Value,
    },
    /// `for iv in lo..hi step step`, iv an i32 or i64 scalar; a step <= 0 runs the body zero
    /// times (see the module docs). `body.args` are the
    /// induction variable followed by the carried values, initialised from `init`; the body ends
    /// with a `yield` of the next carried values; the results are the final carried values.
    For {
        lo: Value,
        hi: Value,
        step: Value,
        init: Vec<Value>,
        body: Block,
    },
    /// Both blocks end with a `yield` of the results.
    If {
        cond: Value,
        then_block: Block,
        else_block: Block,
    },
    /// Ends a `for` body or an `if` branch.
    Yield(Vec<Value>),
}

impl Op {
    /// True for the elementwise ops: element `i` of the result depends only on element `i` of
    /// each (same-shaped) operand.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(..)
                | Op::Binary(..)
                | Op::Cmp(..)
                | Op::Select(..)
                | Op::Fma(..)
                | Op::Cast(_)
                | Op::PtrAdd(..)
        )
    }

    /// The values this op reads directly (not those read inside nested blocks).
    pub fn operands(&self) -> Vec<Value> {
        match self {
            Op::Const(_) | Op::ProgramId(_) | Op::NumPrograms(_) | Op::Range(_) => vec![],
            Op::Splat(v)
            | Op::Broadcast(v)
            | Op::Reshape(v)
            | Op::Trans(v)
            | Op::Unary(_, v)
            | Op::Cast(v) => vec![*v],
            Op::Binary(_, a, b) | Op::Cmp(_, a, b) | Op::PtrAdd(a, b) => vec![*a, *b],
            Op::Select(a, b, c) | Op::Fma(a, b, c) => vec![*a, *b, *c],
            Op::Load { ptr, mask, other } => {
                let mut v = vec![*ptr];
                v.extend(mask.iter().copied());
                v.extend(other.iter().copied());
                v
            }
            Op::Store { ptr, value, mask } | Op::AtomicAdd { ptr, value, mask } => {
                let mut v = vec![*ptr, *value];
                v.extend(mask.iter().copied());
                v
            }
            Op::Reduce { value, .. } => vec![*value],
            Op::Dot { a, b, acc } => vec![*a, *b, *acc],
            Op::For {
                lo, hi, step, init, ..
            } => {
                let mut v = vec![*lo, *hi, *step];
                v.extend(init.iter().copied());
                v
            }
            Op::If { cond, .. } => vec![*cond],
            Op::Yield(vs) => vs.clone(),
        }
    }

    /// Mutable access to the values this op reads directly.
    pub fn operands_mut(&mut self) -> Vec<&mut Value> {
        match self {
            Op::Const(_) | Op::ProgramId(_) | Op::NumPrograms(_) | Op::Range(_) => vec![],
            Op::Splat(v)
            | Op::Broadcast(v)
            | Op::Reshape(v)
            | Op::Trans(v)
            | Op::Unary(_, v)
            | Op::Cast(v) => vec![v],
            Op::Binary(_, a, b) | Op::Cmp(_, a, b) | Op::PtrAdd(a, b) => vec![a, b],
            Op::Select(a, b, c) | Op::Fma(a, b, c) => vec![a, b, c],
            Op::Load { ptr, mask, other } => {
                let mut v = vec![ptr];
                v.extend(mask.iter_mut());
                v.extend(other.iter_mut());
                v
            }
            Op::Store { ptr, value, mask } | Op::AtomicAdd { ptr, value, mask } => {
                let mut v = vec![ptr, value];
                v.extend(mask.iter_mut());
                v
            }
            Op::Reduce { value, .. } => vec![value],
            Op::Dot { a, b, acc } => vec![a, b, acc],
            Op::For {
                lo, hi, step, init, ..
            } => {
                let mut v = vec![lo, hi, step];
                v.extend(init.iter_mut());
                v
            }
            Op::If { cond, .. } => vec![cond],
            Op::Yield(vs) => vs.iter_mut().collect(),
        }
    }

    /// Nested blocks owned by this op.
    pub fn blocks(&self) -> Vec<&Block> {
        match self {
            Op::For { body, .. } => vec![body],
            Op::If {
                then_block,
                else_block,
                ..
            } => vec![then_block, else_block],
            _ => vec![],
        }
    }

    pub fn blocks_mut(&mut self) -> Vec<&mut Block> {
        match self {
            Op::For { body, .. } => vec![body],
            Op::If {
                then_block,
                else_block,
                ..
            } => vec![then_block, else_block],
            _ => vec![],
        }
    }

    /// True for ops with an effect beyond their results (memory writes, control flow terminators).
    pub fn has_side_effects(&self) -> bool {
        match self {
            Op::Store { .. } | Op::AtomicAdd { .. } | Op::Yield(_) => true,
            Op::For { body, .. } => body.has_side_effects(),
            Op::If {
                then_block,
                else_block,
                ..
            } => then_block.has_side_effects() || else_block.has_side_effects(),
            _ => false,
        }
    }
}

impl Block {
    fn has_side_effects(&self) -> bool {
        self.insts
            .iter()
            .any(|i| !matches!(i.op, Op::Yield(_)) && i.op.has_side_effects())
    }
}
