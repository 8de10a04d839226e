//! Views: a contiguous range of a buffer's elements, used in place of the whole buffer.

use std::fmt;
use std::ops::{Bound, RangeBounds};

use kiln_compiler::DType;

use super::{Buffer, Storage};
use crate::device::Device;
use crate::{Error, Result};

/// A contiguous range of the elements of a [`Buffer`]: a chunk of rows of a weight, one slice of
/// a packed activation. Made by [`Buffer::view`] (all of it) or [`Buffer::slice`] (a range,
/// bounds-checked); copying a view copies no data.
///
/// Operations that take views ([`Device::gemm`]) may write the view they are given as output,
/// as kernels write buffers passed by shared reference (see [`Buffer`]).
#[derive(Clone, Copy)]
pub struct BufferView<'a> {
    buffer: &'a Buffer,
    offset: usize,
    len: usize,
}

impl Buffer {
    /// A view of all of the buffer.
    pub fn view(&self) -> BufferView<'_> {
        BufferView {
            buffer: self,
            offset: 0,
            len: self.len,
        }
    }

    /// A view of the elements in `range`, or [`Error::OutOfRange`] if it does not fit.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<BufferView<'_>> {
        self.view().slice(range)
    }
}

impl<'a> BufferView<'a> {
    /// The elements in `range` of this view (indices relative to the view), or
    /// [`Error::OutOfRange`] if it does not fit.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<BufferView<'a>> {
        let (start, end) = resolve(&range, self.len)?;
        Ok(BufferView {
            buffer: self.buffer,
            offset: self.offset + start,
            len: end - start,
        })
    }

    /// The buffer viewed.
    pub fn buffer(&self) -> &'a Buffer {
        self.buffer
    }

    /// The index in the buffer of the view's first element.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Its length in elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type of the buffer.
    pub fn dtype(&self) -> DType {
        self.buffer.dtype()
    }

    /// The device of the buffer.
    pub fn device(&self) -> &'a Device {
        self.buffer.device()
    }

    /// The address of the view's first element (host or device address).
    pub fn address(&self) -> u64 {
        self.buffer.address() + (self.offset * self.dtype().size_bytes()) as u64
    }

    /// Whether the two views share an element (only views of one buffer can).
    pub fn overlaps(&self, other: &BufferView<'_>) -> bool {
        std::ptr::eq(self.buffer, other.buffer)
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }

    /// The host address of the view's first element; `None` for device memory.
    pub(crate) fn host_ptr(&self) -> Option<*mut u8> {
        match &self.buffer.storage {
            // In bounds: the view lies inside the allocation.
            Storage::Host(mem) => Some(
                mem.as_ptr()
                    .wrapping_add(self.offset * self.dtype().size_bytes()),
            ),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }
}

impl<'a> From<&'a Buffer> for BufferView<'a> {
    fn from(buffer: &'a Buffer) -> BufferView<'a> {
        buffer.view()
    }
}

/// `range` as `start..end` within `0..len`.
fn resolve(range: &impl RangeBounds<usize>, len: usize) -> Result<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => Some(len),
    };
    match (start, end) {
        (Some(start), Some(end)) if start <= end && end <= len => Ok((start, end)),
        (start, end) => Err(Error::OutOfRange {
            start: start.unwrap_or(usize::MAX),
            end: end.unwrap_or(usize::MAX),
            len,
        }),
    }
}

impl fmt::Debug for BufferView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BufferView({}..{} of {:?})",
            self.offset,
            self.offset + self.len,
            self.buffer
        )
    }
}
