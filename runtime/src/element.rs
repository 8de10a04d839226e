//! Host element types that buffers can be uploaded from and downloaded to.

use half::{bf16, f16};
use kiln_compiler::DType;

mod sealed {
    pub trait Sealed {}
}

/// A host type with the same size and bit layout as a device element type.
///
/// Sealed: implemented only for plain-old-data types for which every bit pattern is a valid
/// value, which is what makes the byte-level copies in this crate sound.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The device element type this host type stores.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
        }
    )*};
}

element!(f32 => F32, i32 => I32, i64 => I64, bf16 => Bf16, f16 => F16);

/// The bytes of a slice of elements.
pub(crate) fn as_bytes<T: Element>(data: &[T]) -> &[u8] {
    // SAFETY: `T` is plain old data (sealed trait); the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// The bytes of a mutable slice of elements; any bytes written form valid elements.
pub(crate) fn as_bytes_mut<T: Element>(data: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(data);
    // SAFETY: `T` is plain old data for which every bit pattern is valid (sealed trait).
    unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), len) }
}
