//! Math functions without a Cranelift instruction or an inline sequence (`expf`): plain Rust
//! functions with the C ABI that the JIT links against by name.

/// A math routine called from generated code; every one takes and returns `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum MathFn {
    Log,
    Log2,
    Tanh,
    Sin,
    Cos,
    /// Float remainder (`%`), two arguments.
    Fmod,
}

impl MathFn {
    pub(super) const ALL: [MathFn; 6] = [
        MathFn::Log,
        MathFn::Log2,
        MathFn::Tanh,
        MathFn::Sin,
        MathFn::Cos,
        MathFn::Fmod,
    ];

    /// The symbol the JIT resolves.
    pub(super) fn symbol(self) -> &'static str {
        match self {
            MathFn::Log => "kiln_logf",
            MathFn::Log2 => "kiln_log2f",
            MathFn::Tanh => "kiln_tanhf",
            MathFn::Sin => "kiln_sinf",
            MathFn::Cos => "kiln_cosf",
            MathFn::Fmod => "kiln_fmodf",
        }
    }

    pub(super) fn arity(self) -> usize {
        match self {
            MathFn::Fmod => 2,
            _ => 1,
        }
    }

    pub(super) fn address(self) -> *const u8 {
        match self {
            MathFn::Log => kiln_logf as *const u8,
            MathFn::Log2 => kiln_log2f as *const u8,
            MathFn::Tanh => kiln_tanhf as *const u8,
            MathFn::Sin => kiln_sinf as *const u8,
            MathFn::Cos => kiln_cosf as *const u8,
            MathFn::Fmod => kiln_fmodf as *const u8,
        }
    }
}

extern "C" fn kiln_logf(x: f32) -> f32 {
    x.ln()
}
extern "C" fn kiln_log2f(x: f32) -> f32 {
    x.log2()
}
extern "C" fn kiln_tanhf(x: f32) -> f32 {
    x.tanh()
}
extern "C" fn kiln_sinf(x: f32) -> f32 {
    x.sin()
}
extern "C" fn kiln_cosf(x: f32) -> f32 {
    x.cos()
}
extern "C" fn kiln_fmodf(x: f32, y: f32) -> f32 {
    x % y
}
