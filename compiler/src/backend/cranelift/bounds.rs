//! Bounds checks: every address a load, store or atomic computes is compared with the bounds of
//! the buffers its pointer may point into ([`crate::ir::Provenance`]). An access out of bounds
//! goes to the scratch slot instead, and the program records its first fault in the record the
//! caller passed (see [`super::AccessFault`]), so a launch can report it as an error.

use super::lower::{Lowerer, Res};
use crate::backend::AccessKind;
use crate::ir::Value;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value as ClValue};

/// Byte offsets of the fault record's fields: the faulting parameter plus one (0: no fault),
/// the access's byte offset from that parameter's address, and its [`AccessKind`].
pub(super) const FAULT_PARAM: i32 = 0;
pub(super) const FAULT_OFFSET: i32 = 8;
pub(super) const FAULT_KIND: i32 = 16;
/// Words in a fault record.
pub const FAULT_WORDS: usize = 3;

/// Where a pointer parameter's buffer is, for the checks: its address, its length in bytes, and
/// for each access span the kernel uses (one element, or a four-lane group), the number of byte
/// offsets at which such an access fits (`len - span + 1`, or 0), so that a check is one
/// subtraction and one unsigned compare.
#[derive(Clone)]
pub(super) struct Bounds {
    pub base: ClValue,
    pub len: ClValue,
    /// `(span, starts)`, computed in the entry block.
    pub starts: Vec<(u32, ClValue)>,
}

impl Bounds {
    /// The bounds of a buffer at `base` of `len` bytes, for accesses of `spans` bytes: emitted
    /// where `b` is (the entry block, so they dominate every access).
    pub(super) fn new(
        b: &mut cranelift_frontend::FunctionBuilder<'_>,
        base: ClValue,
        len: ClValue,
        spans: &[u32],
    ) -> Bounds {
        let starts = spans
            .iter()
            .map(|&span| {
                let fits =
                    b.ins()
                        .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, len, i64::from(span));
                let count = b.ins().iadd_imm_s(len, 1 - i64::from(span));
                let zero = b.ins().iconst(types::I64, 0);
                (span, b.ins().select(fits, count, zero))
            })
            .collect();
        Bounds { base, len, starts }
    }
}

impl Lowerer<'_, '_> {
    /// Whether the access of `span` bytes at `addr`, through pointer value `ptr`, stays inside one
    /// of the buffers `ptr` may point into. Where it does not and `on` holds (the lane's mask;
    /// `None` for an unmasked access), records the fault. Returns `None` when the kernel is
    /// compiled without checks.
    pub(super) fn check_access(
        &mut self,
        ptr: Value,
        addr: ClValue,
        span: u32,
        on: Option<ClValue>,
        kind: AccessKind,
    ) -> Res<Option<ClValue>> {
        let Some(fault_ptr) = self.fault_ptr else {
            return Ok(None);
        };
        let params: Vec<usize> = self.provenance.of_value(ptr).iter().collect();
        let first = *params
            .first()
            .ok_or_else(|| format!("pointer v{} of unknown provenance", ptr.0))?;
        let mut ok = None;
        let mut first_offset = None;
        for &p in &params {
            let bounds = self.bounds[p]
                .as_ref()
                .ok_or("bounds of a scalar parameter")?;
            let (base, len) = (bounds.base, bounds.len);
            let starts = bounds
                .starts
                .iter()
                .find(|(s, _)| *s == span)
                .map(|&(_, c)| c)
                .ok_or_else(|| format!("no bounds for {span}-byte accesses"))?;
            // Unsigned: an address below the buffer wraps to a huge offset.
            let off = self.b.ins().isub(addr, base);
            let inside = self.b.ins().icmp(IntCC::UnsignedLessThan, off, starts);
            ok = Some(match ok {
                Some(o) => self.b.ins().bor(o, inside),
                None => inside,
            });
            first_offset.get_or_insert((off, len));
        }
        let ok = ok.expect("at least one parameter");
        let (off, len) = first_offset.expect("at least one parameter");
        let (fault, record, cont) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.set_cold_block(fault);
        self.b.set_cold_block(record);
        match on {
            None => self.b.ins().brif(ok, cont, &[], fault, &[]),
            Some(on) => {
                let bad = self.b.ins().band_not(on, ok);
                self.b.ins().brif(bad, fault, &[], cont, &[])
            }
        };

        // Only the program's first fault is kept.
        self.b.switch_to_block(fault);
        let flags = MemFlagsData::trusted();
        let seen = self.b.ins().load(types::I64, flags, fault_ptr, FAULT_PARAM);
        self.b.ins().brif(seen, cont, &[], record, &[]);

        self.b.switch_to_block(record);
        let param = self.b.ins().iconst(types::I64, first as i64 + 1);
        self.b.ins().store(flags, param, fault_ptr, FAULT_PARAM);
        // A run of lanes that starts inside the buffer first leaves it at its end.
        let starts_inside = self.b.ins().icmp(IntCC::UnsignedLessThan, off, len);
        let offset = self.b.ins().select(starts_inside, len, off);
        self.b.ins().store(flags, offset, fault_ptr, FAULT_OFFSET);
        let kind = self.b.ins().iconst(types::I64, kind as i64);
        self.b.ins().store(flags, kind, fault_ptr, FAULT_KIND);
        self.b.ins().jump(cont, &[]);

        self.b.switch_to_block(cont);
        Ok(Some(ok))
    }
}
