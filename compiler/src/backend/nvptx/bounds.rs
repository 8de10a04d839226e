//! Bounds-checked kernels ([`super::PtxOptions::bounds_checks`]).
//!
//! The entry takes two more global pointers after the kernel's own parameters: `bounds`, the
//! byte length of each parameter's buffer (one `u64` per parameter, 0 for scalars), and `fault`,
//! the fault record ([`super::FAULT_WORDS`] `u64`s, zero at launch).
//!
//! Every lane of every global access (loads, stores, atomics, and the loop pipeline's
//! `cp.async` copies) is checked against the buffers its pointer may point into
//! ([`Provenance`]): with `off = addr - base` (wrapping), an access of `size` bytes is inside
//! parameter `p` iff `off < len_p && off + size <= len_p`, unsigned. A vector access is checked
//! as one span. A lane outside every buffer is dropped from the access (folded into its
//! predicate: loads yield `other` or zero, stores and atomics do not happen), and the first
//! such lane of the launch claims the record with a compare-and-swap on `fault[0]`; the winner
//! fills in the rest.

use super::lower::{LowerError, Lowerer, Res};
use crate::ir::{Kernel, ParamKind, Provenance, Value};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicValue, FunctionValue, InstructionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, AtomicOrdering, IntPredicate};

pub(super) use crate::backend::AccessKind;

/// The words of the fault record.
const FAULT_PARAM: u64 = 0;
const FAULT_OFFSET: u64 = 1;
const FAULT_KIND: u64 = 2;
const FAULT_PROGRAM: u64 = 3;

/// What the checks of one kernel need.
pub(super) struct Checks<'ctx> {
    provenance: Provenance,
    /// The address (as an `i64`) and byte length of each pointer parameter's buffer; `None`
    /// for scalars.
    bounds: Vec<Option<Bounds<'ctx>>>,
    fault: PointerValue<'ctx>,
}

#[derive(Clone, Copy)]
struct Bounds<'ctx> {
    base: IntValue<'ctx>,
    len: IntValue<'ctx>,
}

/// The types of the two parameters a checked entry takes after the kernel's own.
pub(super) fn extra_params(ctx: &Context) -> [BasicMetadataTypeEnum<'_>; 2] {
    let global = ctx.ptr_type(AddressSpace::from(1)).into();
    [global, global]
}

impl<'ctx> Checks<'ctx> {
    /// Reads the buffer lengths at the top of `func` (where `b` is positioned).
    pub(super) fn new(
        ctx: &'ctx Context,
        b: &Builder<'ctx>,
        func: FunctionValue<'ctx>,
        k: &Kernel,
    ) -> Res<Checks<'ctx>> {
        let provenance = Provenance::of(k).map_err(LowerError)?;
        let n = k.params.len() as u32;
        let param = |i: u32| {
            func.get_nth_param(i)
                .ok_or_else(|| LowerError(format!("missing parameter {i}")))
        };
        let lengths = param(n)?.into_pointer_value();
        let fault = param(n + 1)?.into_pointer_value();
        let i64t = ctx.i64_type();
        let mut bounds = vec![];
        for (i, p) in k.params.iter().enumerate() {
            bounds.push(match p.kind {
                ParamKind::Ptr { .. } => {
                    let ptr = param(i as u32)?.into_pointer_value();
                    let base = b.build_ptr_to_int(ptr, i64t, "base")?;
                    let at = word(b, i64t, lengths, i as u64)?;
                    let len = b.build_load(i64t, at, "len")?;
                    set_align8(len.as_instruction_value())?;
                    let len = len.into_int_value();
                    Some(Bounds { base, len })
                }
                ParamKind::Scalar(_) => None,
            });
        }
        Ok(Checks {
            provenance,
            bounds,
            fault,
        })
    }
}

impl<'ctx> Lowerer<'_, 'ctx> {
    /// Whether the access of `bytes` bytes at `addr`, through the IR pointer `ptr`, lies inside
    /// one of the buffers `ptr` may point into (an `i1`); where it does not and `on` holds (the
    /// lane takes part; `None`: always), records the fault. `None` when the kernel is unchecked.
    pub(super) fn check_access(
        &self,
        ptr: Value,
        addr: PointerValue<'ctx>,
        bytes: u32,
        on: Option<IntValue<'ctx>>,
        kind: AccessKind,
    ) -> Res<Option<IntValue<'ctx>>> {
        let Some(c) = &self.checks else {
            return Ok(None);
        };
        let i64t = self.ctx.i64_type();
        let a = self.b.build_ptr_to_int(addr, i64t, "")?;
        let size = i64t.const_int(bytes as u64, false);
        let mut inside: Option<IntValue<'ctx>> = None;
        let mut first = None;
        for p in c.provenance.of_value(ptr).iter() {
            let Bounds { base, len } = c.bounds[p].ok_or_else(|| {
                LowerError(format!("v{} points into scalar parameter {p}", ptr.0))
            })?;
            // Unsigned: an address below the buffer wraps to a huge offset.
            let off = self.b.build_int_sub(a, base, "off")?;
            let starts = self.b.build_int_compare(IntPredicate::ULT, off, len, "")?;
            let end = self.b.build_int_add(off, size, "")?;
            let ends = self.b.build_int_compare(IntPredicate::ULE, end, len, "")?;
            let here = self.b.build_and(starts, ends, "")?;
            inside = Some(match inside {
                Some(i) => self.b.build_or(i, here, "")?,
                None => here,
            });
            if first.is_none() {
                // A span that starts inside first leaves the buffer at its end.
                let offset = self.b.build_select(starts, len, off, "")?.into_int_value();
                first = Some((p, offset));
            }
        }
        let (Some(inside), Some((param, offset))) = (inside, first) else {
            return Err(LowerError(format!(
                "pointer v{} of unknown provenance",
                ptr.0
            )));
        };
        let outside = self.b.build_not(inside, "")?;
        let fault = self.and_opt(Some(outside), on)?;
        self.guarded(fault, None, |s| {
            s.record_fault(c.fault, param, offset, kind)?;
            Ok(None)
        })?;
        Ok(Some(inside))
    }

    /// Claims the fault record for this access unless an earlier one has.
    fn record_fault(
        &self,
        fault: PointerValue<'ctx>,
        param: usize,
        offset: IntValue<'ctx>,
        kind: AccessKind,
    ) -> Res<()> {
        let i64t = self.ctx.i64_type();
        let at = |w| word(&self.b, i64t, fault, w);
        let id = i64t.const_int(param as u64 + 1, false);
        let cas = self.b.build_cmpxchg(
            at(FAULT_PARAM)?,
            i64t.const_zero(),
            id,
            AtomicOrdering::Monotonic,
            AtomicOrdering::Monotonic,
        )?;
        let won = self.b.build_extract_value(cas, 1, "won")?.into_int_value();
        self.guarded(Some(won), None, |s| {
            let program = s.linear_program_id()?;
            let kind = i64t.const_int(kind as u64, false);
            for (w, v) in [
                (FAULT_OFFSET, offset),
                (FAULT_KIND, kind),
                (FAULT_PROGRAM, program),
            ] {
                set_align8(Some(s.b.build_store(at(w)?, v)?))?;
            }
            Ok(None)
        })?;
        Ok(())
    }

    /// `ctaid.x + ctaid.y * nctaid.x + ctaid.z * nctaid.x * nctaid.y`, as an `i64`.
    fn linear_program_id(&self) -> Res<IntValue<'ctx>> {
        let i64t = self.ctx.i64_type();
        let read = |name, axis| -> Res<IntValue<'ctx>> {
            let v = self.sreg(name, axis)?.into_int_value();
            Ok(self.b.build_int_z_extend(v, i64t, "")?)
        };
        let (x, y, z) = (read("ctaid", 0)?, read("ctaid", 1)?, read("ctaid", 2)?);
        let (nx, ny) = (read("nctaid", 0)?, read("nctaid", 1)?);
        let plane = self.b.build_int_mul(nx, ny, "")?;
        let row = self.b.build_int_mul(y, nx, "")?;
        let layer = self.b.build_int_mul(z, plane, "")?;
        let id = self.b.build_int_add(x, row, "")?;
        Ok(self.b.build_int_add(id, layer, "")?)
    }
}

/// The address of `u64` word `w` of the global array at `base`.
fn word<'ctx>(
    b: &Builder<'ctx>,
    i64t: inkwell::types::IntType<'ctx>,
    base: PointerValue<'ctx>,
    w: u64,
) -> Res<PointerValue<'ctx>> {
    // SAFETY: a word of a record or table the launcher sized for it.
    Ok(unsafe { b.build_in_bounds_gep(i64t, base, &[i64t.const_int(w, false)], "")? })
}

/// Words are 8-byte aligned (the module has no data layout yet, whose default would say 4, and
/// LLVM would then split each access in two).
fn set_align8(i: Option<InstructionValue>) -> Res<()> {
    i.ok_or_else(|| LowerError("not an instruction".into()))?
        .set_alignment(8)
        .map_err(|e| LowerError(e.to_string()))
}
