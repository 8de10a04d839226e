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
