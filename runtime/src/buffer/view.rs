//! Views: a contiguous range of a buffer's elements, used in place of the whole buffer.
//! [`BufferView`] is shared (what a kernel reads), [`BufferViewMut`] exclusive (what a kernel
//! writes): the borrow checker then rules out a launch racing a download, or an output aliasing
//! an input.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use kiln_compiler::DType;

use super::Buffer;
use crate::device::Device;
use crate::{Error, Result};

/// A contiguous range of the elements of a [`Buffer`]: a chunk of rows of a weight, one slice of
/// a packed activation. Made by [`Buffer::view`] (all of it) or [`Buffer::slice`] (a range,
/// bounds-checked); copying a view copies no data.
///
/// Nothing writes through a `BufferView`: kernels and [`Device::gemm`] write only
/// [`BufferViewMut`]s.
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
        // In bounds: the view lies inside the allocation.
        let base = self.buffer.host_base()?;
        Some(base.wrapping_add(self.offset * self.dtype().size_bytes()))
    }
}

impl<'a> From<&'a Buffer> for BufferView<'a> {
    fn from(buffer: &'a Buffer) -> BufferView<'a> {
        buffer.view()
    }
}

impl<'a> From<&'a mut Buffer> for BufferView<'a> {
    fn from(buffer: &'a mut Buffer) -> BufferView<'a> {
        buffer.view()
    }
}

impl<'a> From<&'a BufferViewMut<'_>> for BufferView<'a> {
    fn from(view: &'a BufferViewMut<'_>) -> BufferView<'a> {
        view.as_view()
    }
}

/// A contiguous range of the elements of a [`Buffer`], borrowed exclusively: what a kernel may
/// write. Made by [`Buffer::view_mut`], [`Buffer::slice_mut`] or by splitting another one
/// ([`BufferViewMut::split_at`]), so that one arena can lend an input and an output of the
/// same launch at once:
///
/// ```
/// # fn main() -> kiln_runtime::Result<()> {
/// let device = kiln_runtime::Device::cpu();
/// let mut arena = device.upload(&[1.0f32; 8])?;
/// let (x, mut y) = arena.view_mut().split_at(4)?;
/// let x = x.into_view(); // read: shared from here on
/// # let _ = (x, y.reborrow());
/// # Ok(()) }
/// ```
///
/// Views of one buffer made this way never overlap, and while any of them lives the buffer
/// cannot be read, written or dropped through another path:
///
/// ```compile_fail
/// # let device = kiln_runtime::Device::cpu();
/// let mut arena = device.upload(&[1.0f32; 8]).unwrap();
/// let a = arena.view_mut();
/// let b = arena.view_mut(); // a second exclusive view while the first lives
/// drop((a, b));
/// ```
pub struct BufferViewMut<'a> {
    // Shared internally: disjoint mutable views of one buffer hold the same `&Buffer`. The
    // exclusive borrow they came from lives as long as `'a` (the marker). Never handed out
    // with lifetime `'a` while `self` lives: that would let a shared and an exclusive view of
    // the same elements coexist.
    view: BufferView<'a>,
    _exclusive: PhantomData<&'a mut Buffer>,
}

impl Buffer {
    /// An exclusive view of all of the buffer.
    pub fn view_mut(&mut self) -> BufferViewMut<'_> {
        BufferViewMut::new(self.view())
    }

    /// An exclusive view of the elements in `range`, or [`Error::OutOfRange`] if it does not
    /// fit.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> Result<BufferViewMut<'_>> {
        self.view_mut().into_slice(range)
    }
}

impl<'a> BufferViewMut<'a> {
    /// Exclusive access to `view`: only for views made from an exclusive borrow, or split from
    /// one, so that no other view of these elements exists.
    fn new(view: BufferView<'a>) -> BufferViewMut<'a> {
        BufferViewMut {
            view,
            _exclusive: PhantomData,
        }
    }

    /// The elements in `range` of this view (indices relative to the view), borrowing it.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> Result<BufferViewMut<'_>> {
        self.reborrow().into_slice(range)
    }

    /// The elements in `range`, consuming the view (so the result lives as long as it did).
    pub fn into_slice(self, range: impl RangeBounds<usize>) -> Result<BufferViewMut<'a>> {
        Ok(BufferViewMut::new(self.view.slice(range)?))
    }

    /// The first `mid` elements and the rest, as two views that can be used at once.
    pub fn split_at(self, mid: usize) -> Result<(BufferViewMut<'a>, BufferViewMut<'a>)> {
        let (head, tail) = (self.view.slice(..mid)?, self.view.slice(mid..)?);
        Ok((BufferViewMut::new(head), BufferViewMut::new(tail)))
    }

    /// A shorter-lived exclusive view of the same elements, leaving this one usable afterwards.
    pub fn reborrow(&mut self) -> BufferViewMut<'_> {
        BufferViewMut::new(self.view)
    }

    /// A shared view of the same elements, for as long as this one is borrowed.
    pub fn as_view(&self) -> BufferView<'_> {
        self.view
    }

    /// Gives up exclusive access: a shared view of the same elements for the rest of `'a`.
    pub fn into_view(self) -> BufferView<'a> {
        self.view
    }

    /// Its length in elements.
    pub fn len(&self) -> usize {
        self.view.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// The element type of the buffer.
    pub fn dtype(&self) -> DType {
        self.view.dtype()
    }

    /// The device of the buffer.
    pub fn device(&self) -> &'a Device {
        self.view.device()
    }

    /// The index in the buffer of the view's first element.
    pub fn offset(&self) -> usize {
        self.view.offset
    }

    /// The address of the view's first element (host or device address).
    pub fn address(&self) -> u64 {
        self.view.address()
    }
}

impl<'a> From<&'a mut Buffer> for BufferViewMut<'a> {
    fn from(buffer: &'a mut Buffer) -> BufferViewMut<'a> {
        buffer.view_mut()
    }
}

impl<'a, 'b> From<&'a mut BufferViewMut<'b>> for BufferViewMut<'a> {
    fn from(view: &'a mut BufferViewMut<'b>) -> BufferViewMut<'a> {
        view.reborrow()
    }
}

impl fmt::Debug for BufferViewMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BufferViewMut({:?})", self.as_view())
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
