//! From a [`KernelSpec`] to a backend artefact: the only place the compiler is called.

use kiln_compiler::ir;

use super::key::KernelSpec;
use crate::{Error, Result};

/// The kernel `spec` names, checked, specialised and optimised.
pub(crate) fn kernel_ir(spec: &KernelSpec<'_>) -> Result<ir::Kernel> {
    let kernels = kiln_compiler::compile_to_ir(spec.source, &spec.defines)?;
    find(kernels, spec)
}

/// The kernel of `kernels` that `spec` names.
fn find(kernels: Vec<ir::Kernel>, spec: &KernelSpec<'_>) -> Result<ir::Kernel> {
    let available = kernels
        .iter()
        .map(|k| format!("`{}`", k.name))
        .collect::<Vec<_>>();
    kernels
        .into_iter()
        .find(|k| k.name == spec.kernel)
        .ok_or_else(|| Error::KernelNotFound {
            name: spec.kernel.to_string(),
            source_name: spec.source.name.clone(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        })
}

/// The run-time parameters of the kernel `spec` names (checked, not compiled).
pub(crate) fn params(spec: &KernelSpec<'_>) -> Result<Vec<ir::Param>> {
    let kernels = kiln_compiler::check(spec.source, &spec.defines)?;
    find(kernels, spec).map(|k| k.params)
}

/// Native code for this machine.
pub(crate) fn cranelift(
    spec: &KernelSpec<'_>,
) -> Result<kiln_compiler::backend::cranelift::CpuKernel> {
    use kiln_compiler::backend::cranelift::{compile_with, CpuOptions};
    let ir = kernel_ir(spec)?;
    let options = CpuOptions {
        bounds_checks: spec.bounds_checks.checked(false),
    };
    Ok(compile_with(&ir, options)?)
}

/// PTX for `arch`.
#[cfg(feature = "cuda")]
pub(crate) fn ptx(
    spec: &KernelSpec<'_>,
    arch: kiln_compiler::backend::nvptx::Arch,
    specialization: &super::Specialization,
) -> Result<super::PtxArtifact> {
    use kiln_compiler::backend::nvptx;
    let ir = kernel_ir(spec)?;
    let options = nvptx::PtxOptions {
        arch,
        num_warps: spec.num_warps,
        divisible_by_16: specialization.divisible_by_16,
        num_stages: spec.num_stages,
        bounds_checks: spec.bounds_checks.checked(true),
    };
    let compiled = nvptx::compile_ptx(&ir, &options)?;
    Ok(super::PtxArtifact {
        kernel: ir.name,
        params: ir.params,
        ptx: compiled.ptx,
        entry: compiled.entry,
        threads_per_block: compiled.threads_per_block,
        shared_bytes: compiled.shared_bytes,
        divisible_by_16: specialization.divisible_by_16,
        bounds_checks: spec.bounds_checks.checked(true),
        cubin: vec![],
    })
}
