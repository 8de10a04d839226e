//! The JIT module: host ISA with `opt_level=speed`, stack probes for large tile frames, and the
//! math and tile-product symbols generated code calls.

use super::math::MathFn;
use cranelift_codegen::ir::{types, AbiParam, Signature};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::collections::HashMap;

/// A fresh JIT module for the host.
pub(super) fn new_module() -> Result<JITModule, String> {
    let flags = [
        ("opt_level", "speed"),
        // Tiles live in the frame, which can span many pages.
        ("enable_probestack", "true"),
        ("probestack_strategy", "inline"),
    ];
    let mut builder =
        JITBuilder::with_flags(&flags, default_libcall_names()).map_err(|e| e.to_string())?;
    for f in MathFn::ALL {
        builder.symbol(f.symbol(), f.address());
    }
    builder.symbol(
        super::tile_dot::SYMBOL,
        super::tile_dot::kiln_tile_dot as *const u8,
    );
    Ok(JITModule::new(builder))
}

/// Declares every math routine as an import; generated code refers to them through these ids.
pub(super) fn declare_math(module: &mut JITModule) -> Result<HashMap<MathFn, FuncId>, String> {
    let mut ids = HashMap::new();
    for f in MathFn::ALL {
        let mut sig = module.make_signature();
        sig.params
            .extend(std::iter::repeat_n(AbiParam::new(types::F32), f.arity()));
        sig.returns.push(AbiParam::new(types::F32));
        let id = module
            .declare_function(f.symbol(), Linkage::Import, &sig)
            .map_err(|e| e.to_string())?;
        ids.insert(f, id);
    }
    Ok(ids)
}

/// `fn(args: *const u64, bounds: *const u64, program_id: *const u32, num_programs: *const u32,
/// fault: *mut u64)`.
pub(super) fn kernel_signature(module: &JITModule) -> Signature {
    let mut sig = module.make_signature();
    let ptr = module.target_config().pointer_type();
    sig.params.extend([AbiParam::new(ptr); 5]);
    sig
}
