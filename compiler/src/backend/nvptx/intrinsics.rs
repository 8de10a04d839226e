//! Looking up LLVM intrinsics by name. A misspelled name would silently become a call to an
//! external function in PTX, so an unknown name is an error here instead.

use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::BasicTypeEnum;
use inkwell::values::FunctionValue;

/// The declaration of intrinsic `name`, overloaded on `types` (empty if not overloaded).
pub fn declare<'ctx>(
    module: &Module<'ctx>,
    name: &str,
    types: &[BasicTypeEnum<'ctx>],
) -> Result<FunctionValue<'ctx>, String> {
    Intrinsic::find(name)
        .and_then(|i| i.get_declaration(module, types))
        .ok_or_else(|| format!("LLVM has no intrinsic `{name}`"))
}
