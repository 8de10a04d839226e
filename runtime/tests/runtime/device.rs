use kiln_runtime::{Device, DeviceKind, Error};

#[test]
fn cpu_device_describes_itself() {
    let cpu = Device::cpu();
    assert_eq!(cpu.kind(), DeviceKind::Cpu);
    assert!(!cpu.is_gpu());
    assert_eq!(cpu.ordinal(), None);
    assert_eq!(cpu.compute_capability(), None);
    assert!(cpu.name().starts_with("cpu"), "{}", cpu.name());
    assert_eq!(cpu.to_string(), "cpu");
    assert_eq!(cpu.clone(), cpu);
    cpu.synchronize().unwrap();
}

#[test]
fn cuda_device_opens_or_says_why_not() {
    match Device::cuda(0) {
        Ok(gpu) => {
            assert!(gpu.is_gpu());
            assert_eq!(gpu.ordinal(), Some(0));
            let (major, _) = gpu.compute_capability().unwrap();
            assert!(major >= 1);
            assert_ne!(gpu, Device::cpu());
            // A second open is the same device, and events of the two compare.
            let again = Device::cuda(0).unwrap();
            assert_eq!(again, gpu);
            let a = gpu.record_event().unwrap();
            let b = again.record_event().unwrap();
            assert!(a.elapsed_ms(&b).unwrap() >= 0.0);
            println!(
                "found {} (compute capability {:?})",
                gpu.name(),
                gpu.compute_capability()
            );
        }
        Err(e) => {
            assert!(matches!(e, Error::NoCudaDevice { .. }), "{e:?}");
            let message = e.to_string();
            assert!(message.starts_with("no CUDA device: "), "{message}");
            assert!(message.len() > "no CUDA device: ".len() + 10, "{message}");
            println!("skipped: no CUDA device ({message})");
        }
    }
}

#[test]
fn cuda_device_out_of_range_is_a_clean_error() {
    let err = Device::cuda(4096).unwrap_err();
    assert!(matches!(err, Error::NoCudaDevice { .. }), "{err:?}");
}

#[test]
fn cpu_events_time_host_work() {
    let cpu = Device::cpu();
    let start = cpu.record_event().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let end = cpu.record_event().unwrap();
    let ms = start.elapsed_ms(&end).unwrap();
    assert!((4.0..1000.0).contains(&ms), "{ms}");
    assert_eq!(end.elapsed_ms(&start).unwrap(), 0.0);
}
