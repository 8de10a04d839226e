//! Building a kernel instruction by instruction.

use super::{Block, ConstValue, Inst, Kernel, Op, Param, ParamKind, Type, Value};
use crate::ir::Elem;
use crate::types::DType;

/// Appends instructions to the innermost open block of a kernel under construction.
///
/// Nested blocks (loop bodies, `if` branches) are opened with [`Builder::begin_block`] and closed
/// with [`Builder::end_block`], which hands the finished block back for the caller to put in an op.
pub struct Builder {
    name: String,
    consts: Vec<(String, ConstValue)>,
    params: Vec<Param>,
    values: Vec<Type>,
    open: Vec<Block>,
}

impl Builder {
    pub fn new(name: impl Into<String>) -> Builder {
        Builder {
            name: name.into(),
            consts: vec![],
            params: vec![],
            values: vec![],
            open: vec![Block::default()],
        }
    }

    /// Records a compile-time constant the kernel was specialised with.
    pub fn add_const(&mut self, name: impl Into<String>, value: ConstValue) {
        self.consts.push((name.into(), value));
    }

    /// Declares a run-time parameter; returns the value that stands for it in the body.
    pub fn add_param(&mut self, name: impl Into<String>, kind: ParamKind) -> Value {
        let ty = match kind {
            ParamKind::Ptr { pointee, .. } => Type {
                elem: Elem::Ptr(pointee),
                shape: vec![],
            },
            ParamKind::Scalar(d) => Type::scalar(d),
        };
        self.params.push(Param {
            name: name.into(),
            kind,
        });
        let v = self.new_value(ty);
        self.open[0].args.push(v);
        v
    }

    /// A fresh value of this type, not yet defined by any instruction.
    pub fn new_value(&mut self, ty: Type) -> Value {
        self.values.push(ty);
        Value(self.values.len() as u32 - 1)
    }

    pub fn ty(&self, v: Value) -> &Type {
        &self.values[v.index()]
    }

    /// Appends an op with one result of type `ty`.
    pub fn push(&mut self, op: Op, ty: Type) -> Value {
        let v = self.new_value(ty);
        self.push_with_results(op, vec![v]);
        v
    }

    /// Appends an op with no results (store, yield, ...).
    pub fn push_effect(&mut self, op: Op) {
        self.push_with_results(op, vec![]);
    }

    /// Appends an op whose result values were made with [`Builder::new_value`].
    pub fn push_with_results(&mut self, op: Op, results: Vec<Value>) {
        self.open
            .last_mut()
            .expect("builder always has an open block")
            .insts
            .push(Inst { results, op });
    }

    pub fn constant(&mut self, c: ConstValue, ty: Type) -> Value {
        self.push(Op::Const(c), ty)
    }

    pub fn const_i32(&mut self, v: i32) -> Value {
        self.constant(ConstValue::Int(v as i64), Type::scalar(DType::I32))
    }

    /// Opens a nested block with these arguments; instructions go there until `end_block`.
    pub fn begin_block(&mut self, args: Vec<Value>) {
        self.open.push(Block {
            args,
            insts: vec![],
        });
    }

    pub fn end_block(&mut self) -> Block {
        assert!(self.open.len() > 1, "end_block without begin_block");
        self.open.pop().unwrap()
    }

    /// Depth of nested open blocks (0 at the kernel's top level).
    pub fn depth(&self) -> usize {
        self.open.len() - 1
    }

    pub fn finish(mut self) -> Kernel {
        assert_eq!(self.open.len(), 1, "unclosed block");
        Kernel {
            name: self.name,
            consts: self.consts,
            params: self.params,
            body: self.open.pop().unwrap(),
            values: self.values,
        }
    }
}
