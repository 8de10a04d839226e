//! [`HostTensor`]: a named tensor in host memory, as checkpoints are read and written.

/// A tensor in host memory, converted to f32 (exact for f32, bf16 and f16 sources, and for every
/// dequantized GGUF type). Row-major; `data.len()` is the product of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; panics if the lengths disagree (a bug of the caller).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?} does not match its {} elements",
            data.len()
        );
        HostTensor { shape, data }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
