//! Bounds checks: every address a load, store or atomic computes is compared with the bounds of
//! the buffers its pointer may point into ([`crate::ir::Provenance`]). An access out of bounds
//! goes to the scratch slot instead, and the program records its first fault in the record the
//! caller passed (see [`super::AccessFault`]), so a launch can report it as an error.

use super::lower::{Lowerer, Res};
use crate::ir::Value;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value as ClValue};

/// What an access does, as recorded in a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Load = 1,
    Store = 2,
    AtomicAdd = 3,
}

impl AccessKind {
    pub(super) fn from_code(code: u64) -> Option<AccessKind> {
        match code {
            1 => Some(AccessKind::Load),
            2 => Some(AccessKind::Store),
            3 => Some(AccessKind::AtomicAdd),
            _ => None,
        }
    }

    /// The access as a noun (`a store`).
    pub fn describe(self) -> &'static str {
        match self {
            AccessKind::Load => "a load",
            AccessKind::Store => "a store",
            AccessKind::AtomicAdd => "an atomic add",
        }
    }
}

/// Byte offsets of the fault record's fields: the faulting parameter plus one (0: no fault),
/// the access's byte offset from that parameter's address, and its [`AccessKind`].
pub(super) const FAULT_PARAM: i32 = 0;
pub(super) const FAULT_OFFSET: i32 = 8;
pub(super) const FAULT_KIND: i32 = 16;
/// Words in a fault record.
pub const FAULT_WORDS: usize = 3;

/// Where a pointer parameter's buffer is, for the checks: its address and its length in bytes.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    pub base: ClValue,
    pub len: ClValue,
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
        let mut ok = self.b.ins().iconst(types::I8, 0);
        let mut first_offset = None;
        for &p in &params {
            let Bounds { base, len } = self.bounds[p].ok_or("bounds of a scalar parameter")?;
            let off = self.b.ins().isub(addr, base);
            // Unsigned: an address below the buffer wraps to a huge offset.
            let starts_inside = self.b.ins().icmp(IntCC::UnsignedLessThan, off, len);
            let end = self.b.ins().iadd_imm_s(off, i64::from(span));
            let ends_inside = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, end, len);
            let inside = self.b.ins().band(starts_inside, ends_inside);
            ok = self.b.ins().bor(ok, inside);
            if first_offset.is_none() {
                // A run of lanes that starts inside first leaves the buffer at its end.
                first_offset = Some(self.b.ins().select(starts_inside, len, off));
            }
        }
        let offset = first_offset.expect("at least one parameter");
        let bad = self.b.ins().bxor_imm_u(ok, 1);
        let bad = match on {
            Some(on) => self.b.ins().band(bad, on),
            None => bad,
        };
        let (fault, record, cont) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.set_cold_block(fault);
        self.b.set_cold_block(record);
        self.b.ins().brif(bad, fault, &[], cont, &[]);

        // Only the program's first fault is kept.
        self.b.switch_to_block(fault);
        let flags = MemFlagsData::trusted();
        let seen = self.b.ins().load(types::I64, flags, fault_ptr, FAULT_PARAM);
        self.b.ins().brif(seen, cont, &[], record, &[]);

        self.b.switch_to_block(record);
        let param = self.b.ins().iconst(types::I64, first as i64 + 1);
        self.b.ins().store(flags, param, fault_ptr, FAULT_PARAM);
        self.b.ins().store(flags, offset, fault_ptr, FAULT_OFFSET);
        let kind = self.b.ins().iconst(types::I64, kind as i64);
        self.b.ins().store(flags, kind, fault_ptr, FAULT_KIND);
        self.b.ins().jump(cont, &[]);

        self.b.switch_to_block(cont);
        Ok(Some(ok))
    }
}
