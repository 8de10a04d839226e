use half::{bf16, f16};
use kiln_compiler::DType;
use kiln_runtime::{Device, Element, Error};

use crate::devices;

fn round_trip<T: Element + PartialEq + std::fmt::Debug>(device: &Device, data: &[T]) {
    let buffer = device.upload(data).unwrap();
    assert_eq!(buffer.dtype(), T::DTYPE);
    assert_eq!(buffer.len(), data.len());
    assert_eq!(buffer.size_bytes(), data.len() * T::DTYPE.size_bytes());
    assert_eq!(buffer.download::<T>().unwrap(), data, "on {device}");
}

#[test]
fn upload_download_round_trips_every_element_type() {
    for device in devices("upload_download_round_trips_every_element_type") {
        round_trip(&device, &[1.5f32, -0.0, f32::INFINITY, 3e-40]);
        round_trip(&device, &[i32::MIN, -1, 0, 7, i32::MAX]);
        round_trip(&device, &[i64::MIN, -1, 1 << 40, i64::MAX]);
        round_trip(
            &device,
            &[bf16::from_f32(1.0), bf16::from_f32(-3.5), bf16::MAX],
        );
        round_trip(&device, &[f16::from_f32(0.25), f16::from_f32(-65504.0)]);
        round_trip::<f32>(&device, &[]);
    }
}

#[test]
fn alloc_is_zeroed_and_poison_and_fill_overwrite() {
    for device in devices("alloc_is_zeroed_and_poison_and_fill_overwrite") {
        let mut b = device.alloc(DType::F32, 1000).unwrap();
        assert!(b.download::<f32>().unwrap().iter().all(|&v| v == 0.0));
        b.poison().unwrap();
        assert!(b.download::<f32>().unwrap().iter().all(|v| v.is_nan()));
        b.fill(2.5f32).unwrap();
        assert!(b.download::<f32>().unwrap().iter().all(|&v| v == 2.5));

        let mut i = device.alloc(DType::I64, 3).unwrap();
        i.poison().unwrap();
        assert_eq!(i.download::<i64>().unwrap(), [-1, -1, -1]);
    }
}

#[test]
fn dtype_and_length_are_checked() {
    let device = Device::cpu();
    let mut b = device.upload(&[1i32, 2, 3]).unwrap();
    let err = b.download::<f32>().unwrap_err();
    assert!(
        matches!(
            err,
            Error::DTypeMismatch {
                actual: DType::I32,
                requested: DType::F32
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "buffer holds i32 elements, not f32");
    assert!(matches!(b.fill(1i64), Err(Error::DTypeMismatch { .. })));
    let err = b.write(&[1i32, 2]).unwrap_err();
    assert!(
        matches!(err, Error::LengthMismatch { buffer: 3, host: 2 }),
        "{err:?}"
    );
    b.write(&[4i32, 5, 6]).unwrap();
    assert_eq!(b.download::<i32>().unwrap(), [4, 5, 6]);
}

#[test]
fn cpu_buffers_are_64_byte_aligned() {
    let device = Device::cpu();
    for len in [1, 3, 17, 1000, 4097] {
        for dtype in [DType::Bool, DType::Bf16, DType::F32, DType::I64] {
            let b = device.alloc(dtype, len).unwrap();
            assert_eq!(b.address() % 64, 0, "{len} x {dtype}");
        }
    }
}

#[test]
fn impossible_allocations_fail_cleanly() {
    let err = Device::cpu().alloc(DType::I64, usize::MAX / 4).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    let err = Device::cpu()
        .alloc(DType::I64, usize::MAX / 16)
        .unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
}

#[test]
fn buffers_are_used_from_other_threads() {
    for device in devices("buffers_are_used_from_other_threads") {
        let mut b = device.upload(&[1.0f32; 64]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                b.poison().unwrap();
                assert!(b.download::<f32>().unwrap().iter().all(|v| v.is_nan()));
                b.fill(4.0f32).unwrap();
            });
        });
        assert_eq!(b.download::<f32>().unwrap(), [4.0; 64]);
    }
}

#[test]
#[allow(clippy::reversed_empty_ranges)] // a reversed range is one of the errors tested
fn slices_are_bounds_checked_views_at_an_offset() {
    for device in devices("slices_are_bounds_checked_views_at_an_offset") {
        let b = device.upload(&[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let whole = b.view();
        assert_eq!((whole.offset(), whole.len()), (0, 6));
        let s = b.slice(2..5).unwrap();
        assert_eq!((s.offset(), s.len(), s.dtype()), (2, 3, DType::F32));
        assert_eq!(s.address(), b.address() + 8);
        assert_eq!(s.device(), &device);
        // A slice of a slice is relative to it.
        let inner = s.slice(1..).unwrap();
        assert_eq!((inner.offset(), inner.len()), (3, 2));
        assert_eq!(b.slice(..=1).unwrap().len(), 2);
        assert!(b.slice(6..).unwrap().is_empty());

        for err in [
            b.slice(4..7).unwrap_err(),
            b.slice(5..3).unwrap_err(),
            s.slice(..4).unwrap_err(),
            b.slice(..=usize::MAX).unwrap_err(),
        ] {
            assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
        }
        assert_eq!(
            b.slice(4..7).unwrap_err().to_string(),
            "range 4..7 is out of bounds of 6 elements"
        );

        assert!(s.overlaps(&b.slice(4..).unwrap()));
        assert!(!s.overlaps(&b.slice(5..).unwrap()));
        assert!(!s.overlaps(&b.slice(..2).unwrap()));
        let other = device.upload(&[0.0f32; 6]).unwrap();
        assert!(!s.overlaps(&other.view()));
    }
}

#[test]
fn parts_of_one_allocation_are_separate_buffers_and_consecutive_ones_span() {
    for device in devices("parts_of_one_allocation_are_separate_buffers_and_consecutive_ones_span")
    {
        let lens = [5usize, 0, 8, 3];
        let mut parts = device.alloc_parts(DType::F32, &lens, 4).unwrap();
        for (k, p) in parts.iter_mut().enumerate() {
            assert_eq!(p.len(), lens[k]);
            assert_eq!(p.part_alignment(), Some(4));
            assert!(p.download::<f32>().unwrap().iter().all(|&v| v == 0.0));
            let values: Vec<f32> = (0..p.len()).map(|i| (10 * k + i) as f32).collect();
            p.write(&values).unwrap();
        }
        // Each part kept its own values: writes never reached a neighbour.
        for (k, p) in parts.iter().enumerate() {
            let want: Vec<f32> = (0..lens[k]).map(|i| (10 * k + i) as f32).collect();
            assert_eq!(p.download::<f32>().unwrap(), want, "part {k} on {device}");
        }
        // Offsets 0, 8, 8, 16: the span holds each part at its offset, zeros in the gaps.
        let all: Vec<&kiln_runtime::Buffer> = parts.iter().collect();
        let span = kiln_runtime::Buffer::span(&all).expect("consecutive parts span");
        assert_eq!(span.len(), 19);
        let got = span.download::<f32>().unwrap();
        assert_eq!(&got[..5], &[0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&got[5..8], &[0.0; 3]);
        assert_eq!(
            &got[8..16],
            &(20..28).map(|v| v as f32).collect::<Vec<_>>()[..]
        );
        assert_eq!(&got[16..], &[30.0, 31.0, 32.0]);
        assert_eq!(span.address(), parts[0].address());
        drop(span);
        // Out of order, with a part left out, or mixed with another allocation: no span.
        assert!(kiln_runtime::Buffer::span(&[&parts[2], &parts[0]]).is_none());
        assert!(kiln_runtime::Buffer::span(&[&parts[0], &parts[3]]).is_none());
        let other = device.alloc_parts(DType::F32, &[3], 4).unwrap();
        assert!(kiln_runtime::Buffer::span(&[&parts[3], &other[0]]).is_none());
        let own = device.alloc(DType::F32, 5).unwrap();
        assert!(kiln_runtime::Buffer::span(&[&own]).is_none());
        assert_eq!(own.part_alignment(), None);
        // Writing through a span writes the parts; the allocation outlives dropped parts.
        let mut rest: Vec<&mut kiln_runtime::Buffer> = parts.iter_mut().skip(2).collect();
        let mut tail = kiln_runtime::Buffer::span_mut(&mut rest).unwrap();
        tail.fill(7.0f32).unwrap();
        drop(tail);
        let last = parts.pop().unwrap();
        drop(parts);
        assert_eq!(last.download::<f32>().unwrap(), vec![7.0; 3]);
    }
}

#[test]
fn copy_from_copies_on_the_device_and_checks_type_and_length() {
    for device in devices("copy_from_copies_on_the_device_and_checks_type_and_length") {
        let src = device.upload(&[1.0f32, -2.0, 3.5]).unwrap();
        let mut parts = device.alloc_parts(DType::F32, &[2, 3], 64).unwrap();
        parts[1].copy_from(&src).unwrap();
        assert_eq!(parts[1].download::<f32>().unwrap(), vec![1.0, -2.0, 3.5]);
        assert_eq!(parts[0].download::<f32>().unwrap(), vec![0.0, 0.0]);
        assert!(matches!(
            parts[0].copy_from(&src),
            Err(Error::LengthMismatch { .. })
        ));
        let ints = device.upload(&[1i32, 2, 3]).unwrap();
        assert!(matches!(
            parts[1].copy_from(&ints),
            Err(Error::DTypeMismatch { .. })
        ));
    }
}

#[test]
fn uninit_buffers_are_poisoned_in_debug_builds() {
    for device in devices("uninit_buffers_are_poisoned_in_debug_builds") {
        let b = device.alloc_uninit(DType::F32, 4096).unwrap();
        assert_eq!((b.len(), b.dtype()), (4096, DType::F32));
        if cfg!(debug_assertions) {
            // So a kernel that leaves part of its output unwritten fails its test.
            assert!(b.download::<f32>().unwrap().iter().all(|v| v.is_nan()));
        }
    }
}
