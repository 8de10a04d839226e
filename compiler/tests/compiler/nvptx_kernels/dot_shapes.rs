/// Tile shapes `(M, N, K)` of `dot_tile` in `dot.kiln`: single atoms, one or several atoms per
/// warp, warps along either dimension, and tiles too small for all warps (copies). Shared by
/// the compiler's PTX tests and the `kiln-ops` tests that run them on a device.
pub const DOT_SHAPES: &[(usize, usize, usize)] = &[
    (16, 8, 16),
    (16, 16, 16),
    (32, 8, 32),
    (16, 32, 16),
    (32, 32, 16),
    (64, 32, 32),
    (32, 64, 64),
    (128, 64, 32),
    (64, 128, 16),
    (128, 64, 64),
];
