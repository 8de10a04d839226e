//! Events: points in a device's queue of work, for timing.

use std::time::Instant;

use crate::device::{Device, Inner};
#[cfg(feature = "cuda")]
use crate::Error;
use crate::Result;

/// A point in a device's work queue. [`Event::elapsed_ms`] between two events of one device
/// measures the work queued between them: on a GPU with CUDA events (device time), on the CPU,
/// where launches are synchronous, with the host clock.
pub struct Event {
    device: Device,
    point: Point,
}

enum Point {
    Host(Instant),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaEvent),
}

impl Event {
    pub(crate) fn record(device: &Device) -> Result<Event> {
        let point = match device.inner() {
            Inner::Cpu { .. } => Point::Host(Instant::now()),
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => {
                let flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
                let event = d
                    .stream()
                    .record_event(Some(flags))
                    .map_err(|e| Error::cuda("recording an event", e))?;
                Point::Cuda(event)
            }
        };
        Ok(Event {
            device: device.clone(),
            point,
        })
    }

    /// The device the event was recorded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Milliseconds from `self` to `end`, waiting for `end` to complete. Both events must come
    /// from the same device.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        match (&self.point, &end.point) {
            (Point::Host(start), Point::Host(stop)) => {
                Ok(stop.saturating_duration_since(*start).as_secs_f32() * 1e3)
            }
            #[cfg(feature = "cuda")]
            (Point::Cuda(start), Point::Cuda(stop)) if self.device == end.device => {
                if let Inner::Cuda(d) = self.device.inner() {
                    d.count_wait();
                }
                start
                    .elapsed_ms(stop)
                    .map_err(|e| Error::cuda("timing events", e))
            }
            #[cfg(feature = "cuda")]
            _ => Err(Error::Unsupported(format!(
                "timing between events of different devices ({} and {})",
                self.device, end.device
            ))),
        }
    }
}
