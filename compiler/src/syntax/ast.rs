//! The abstract syntax tree produced by the parser.
//!
//! Every node carries the byte span of the source text it came from, so that the checker can
//! point at the exact place a problem is. The tree is untyped: names are not resolved and
//! shapes are not known until `sema` runs.

use crate::types::DType;

/// A half-open byte range `[start, end)` into the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The smallest span covering both `self` and `other`.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// A whole source file: kernels and helper functions, in source order.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Kernel(Kernel),
    Function(Function),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `kernel name<CONSTS>(params) { body }`: an entry point launched over a grid of programs.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: Ident,
    pub consts: Vec<ConstParam>,
    pub params: Vec<Param>,
    pub body: Block,
    pub span: Span,
}

/// A compile-time parameter: `BLOCK: i32 = 1024`, or a type parameter `T: type = bf16` (its
/// `ty` is [`TypeExprKind::Type`]). The default is optional.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstParam {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    pub span: Span,
}

/// A run-time kernel parameter: a pointer or a scalar.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub ty: TypeExpr,
    pub span: Span,
}

/// `fn name(params) { body }`: a helper, inlined at every call site. Its parameters may
/// constrain the element type (`x: f32`) but never the shape: helpers work on tiles of any shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub span: Span,
}

/// A type written in the source: `f32`, `*bf16`, `*mut f32`, `*T`.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeExprKind {
    Scalar(DType),
    Ptr {
        pointee: DType,
        mutable: bool,
    },
    /// A type parameter of the enclosing kernel (or an untyped parameter of the enclosing
    /// helper, which a call may give an element type): `T`, or with `ptr` a pointer to it, `*T`
    /// (`Some(false)`) or `*mut T` (`Some(true)`). The checker substitutes the element type.
    Param {
        name: String,
        ptr: Option<bool>,
    },
    /// `type`, the kind of a type parameter: `<T: type = bf16>`. Only in a constant's header.
    Type,
}

/// `{ stmt; stmt; tail }`. The optional tail expression is the block's value (used by helpers).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub tail: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `let [mut] name [: type] = value;`
    Let {
        name: Ident,
        mutable: bool,
        ty: Option<TypeExpr>,
        value: Expr,
    },
    /// `name = value;` or `name op= value;`
    Assign {
        target: Ident,
        op: Option<BinOp>,
        value: Expr,
    },
    /// `for var in start..end [step s] { body }`
    For {
        var: Ident,
        start: Expr,
        end: Expr,
        step: Option<Expr>,
        body: Block,
    },
    /// `if cond { .. } [else { .. } | else if ..]`; an `else if` is an else block holding one `if`.
    If {
        cond: Expr,
        then_block: Block,
        else_block: Option<Block>,
    },
    /// `static_assert(cond[, "message"]);`
    StaticAssert { cond: Expr, message: Option<String> },
    /// An expression evaluated for its effect: `store(...);`
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(String),
    Unary {
        op: UnOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `value as f32`
    Cast {
        value: Box<Expr>,
        ty: TypeExpr,
    },
    /// `callee(args)`, with optional named arguments: `load(p, mask: m, other: 0.0)`.
    Call {
        callee: Ident,
        args: Vec<Arg>,
    },
    /// `x[:, None]`: keep (`:`) or insert (`None`) axes.
    Index {
        base: Box<Expr>,
        items: Vec<IndexItem>,
    },
    /// `[a, b]`: a list, used for shapes (`zeros([BM, BN], f32)`).
    List(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexItem {
    /// `:` keeps an axis.
    Full,
    /// `None` inserts an axis of size 1.
    NewAxis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `!x`: logical not on `bool`, bitwise not on integers.
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `&&`
    LogicalAnd,
    /// `||`
    LogicalOr,
    /// `&`
    BitAnd,
    /// `|`
    BitOr,
    /// `^`
    BitXor,
    Shl,
    Shr,
}

impl BinOp {
    /// The operator as written in source.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::LogicalAnd => "&&",
            BinOp::LogicalOr => "||",
            BinOp::BitAnd => "&",
            BinOp::BitOr => "|",
            BinOp::BitXor => "^",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
        }
    }

    /// Binding strength, higher binds tighter (Rust's table).
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::LogicalOr => 1,
            BinOp::LogicalAnd => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::BitOr => 4,
            BinOp::BitXor => 5,
            BinOp::BitAnd => 6,
            BinOp::Shl | BinOp::Shr => 7,
            BinOp::Add | BinOp::Sub => 8,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 9,
        }
    }
}
