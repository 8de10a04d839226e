//! Parts: several buffers carved from one allocation, back to back, so that work over all of
//! them can run as one launch over their span. The optimizer keeps every parameter's state,
//! gradient and weights this way and updates them all with one kernel instead of one per
//! tensor (a 0.5B model has 290 tensors; LoRA on 24 layers, 336).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use kiln_compiler::DType;

use super::{Buffer, Storage};
use crate::device::Device;
use crate::Result;

impl Buffer {
    /// One zero-filled allocation split into buffers of `lens` elements of `dtype`, in order,
    /// each starting at a multiple of `align` elements (the gaps stay zero). The parts are
    /// ordinary buffers; [`Buffer::span`] joins consecutive ones.
    pub(crate) fn parts(
        device: &Device,
        dtype: DType,
        lens: &[usize],
        align: usize,
    ) -> Result<Vec<Buffer>> {
        let align = align.max(1);
        let mut offsets = Vec::with_capacity(lens.len());
        let mut end = 0usize;
        for &len in lens {
            let start = end.next_multiple_of(align);
            offsets.push(start);
            end = start + len;
        }
        let whole = Buffer::zeros(device, dtype, end.next_multiple_of(align))?;
        let whole = Arc::new(whole.storage);
        let size = dtype.size_bytes();
        Ok(lens
            .iter()
            .zip(offsets)
            .map(|(&len, start)| Buffer {
                device: device.clone(),
                dtype,
                len,
                storage: Storage::Part {
                    whole: whole.clone(),
                    offset: start * size,
                    align: align * size,
                },
            })
            .collect())
    }

    /// The buffer's place in a shared allocation: the allocation, its byte offset and the
    /// parts' alignment in bytes; `None` for a buffer of its own.
    fn place(&self) -> Option<(&Arc<Storage>, usize, usize)> {
        match &self.storage {
            Storage::Part {
                whole,
                offset,
                align,
            } => Some((whole, *offset, *align)),
            _ => None,
        }
    }

    /// The alignment in elements of the parts this buffer is one of ([`Device::alloc_parts`]);
    /// `None` for a buffer of its own.
    pub fn part_alignment(&self) -> Option<usize> {
        self.place()
            .map(|(_, _, align)| align / self.dtype.size_bytes())
    }

    /// A buffer over `parts` and the gaps between them, if they are consecutive parts of one
    /// allocation ([`Device::alloc_parts`]), of one element type, in allocation order, with
    /// no part left out; otherwise `None`. It ends at the last part's last element.
    fn span_of(parts: &[&Buffer]) -> Option<Buffer> {
        let first = parts.first()?;
        let (whole, start, _) = first.place()?;
        let size = first.dtype.size_bytes();
        let mut end = start + first.size_bytes();
        for part in &parts[1..] {
            let (w, offset, align) = part.place()?;
            if !Arc::ptr_eq(w, whole)
                || part.dtype != first.dtype
                || offset != end.next_multiple_of(align)
            {
                return None;
            }
            end = offset + part.size_bytes();
        }
        Some(Buffer {
            device: first.device.clone(),
            dtype: first.dtype,
            len: (end - start) / size,
            storage: Storage::Part {
                whole: whole.clone(),
                offset: start,
                align: size,
            },
        })
    }

    /// `parts` as one buffer to read (see [`Span`]), if they are consecutive parts of one
    /// allocation in order: element `i` of part `k` is element `offset_k + i` of the span,
    /// where each offset is the previous part's end rounded up to the parts' alignment.
    pub fn span<'a>(parts: &[&'a Buffer]) -> Option<Span<'a>> {
        Buffer::span_of(parts).map(|buffer| Span {
            buffer,
            _parts: PhantomData,
        })
    }

    /// As [`Buffer::span`], to write: the parts stay borrowed exclusively while it lives.
    pub fn span_mut<'a>(parts: &'a mut [&mut Buffer]) -> Option<SpanMut<'a>> {
        let shared: Vec<&Buffer> = parts.iter().map(|p| &**p).collect();
        Buffer::span_of(&shared).map(|buffer| SpanMut {
            buffer,
            _parts: PhantomData,
        })
    }
}

impl Device {
    /// One zero-filled allocation split into buffers of `lens` elements of `dtype`, in order,
    /// each starting at a multiple of `align` elements; [`Buffer::span`] then treats any
    /// consecutive run of them as one buffer. The allocation lives until its last part is
    /// dropped.
    pub fn alloc_parts(&self, dtype: DType, lens: &[usize], align: usize) -> Result<Vec<Buffer>> {
        Buffer::parts(self, dtype, lens, align)
    }
}

/// Consecutive parts of one allocation read as one buffer ([`Buffer::span`]); the parts are
/// borrowed for as long as it lives.
pub struct Span<'a> {
    buffer: Buffer,
    _parts: PhantomData<&'a Buffer>,
}

impl Deref for Span<'_> {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buffer
    }
}

/// Consecutive parts of one allocation written as one buffer ([`Buffer::span_mut`]); the
/// parts are borrowed exclusively for as long as it lives.
pub struct SpanMut<'a> {
    buffer: Buffer,
    _parts: PhantomData<&'a mut Buffer>,
}

impl Deref for SpanMut<'_> {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buffer
    }
}

impl DerefMut for SpanMut<'_> {
    fn deref_mut(&mut self) -> &mut Buffer {
        &mut self.buffer
    }
}
