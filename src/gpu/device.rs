//! An open wgpu device: its queue, the adapter's identity and limits, the
//! errors wgpu reports outside an error scope, and the buffer helpers every
//! other GPU module shares (limit-checked creation, blocking readback).
//!
//! The device is opened with the adapter's own limits rather than WebGPU's
//! conservative defaults: the defaults cap a storage binding at 128 MiB,
//! which Fashion-MNIST as f32 (188 MB) would not fit, while every desktop
//! adapter allows far more.

use std::sync::{mpsc, Arc, Mutex};

use crate::error::GpuError;

/// A device opened on an adapter, with its queue and the helpers that
/// create and read buffers within its limits.
pub(crate) struct GpuDevice {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    /// The features the device was opened with: the adapter's
    /// `TIMESTAMP_QUERY` and `SHADER_F16` when it has them, nothing else.
    features: wgpu::Features,
    /// The WGSL language extensions the shader compiler accepts.
    wgsl: wgpu::WgslLanguageFeatures,
    /// The first error wgpu reported outside an error scope (or the device
    /// loss), kept to be returned by the next readback instead of wgpu's
    /// default of panicking.
    fault: Arc<Mutex<Option<String>>>,
}

/// Fail with [`GpuError::Limit`] when the adapter (or the shaders' u32
/// indexing) allows less than the kernels need.
pub(crate) fn need(what: &str, needed: u64, limit: u64, limit_name: &'static str) -> Result<(), GpuError> {
    if needed > limit {
        return Err(GpuError::Limit {
            what: what.to_string(),
            needed,
            limit,
            limit_name,
        });
    }
    Ok(())
}

impl GpuDevice {
    /// Open a device on `adapter` (one of `instance`'s) with its own limits,
    /// and with `TIMESTAMP_QUERY` and `SHADER_F16` when the adapter has them:
    /// they cost nothing until a pass asks for timestamps or a shader for
    /// f16, and [`crate::gpu::timing`] and the f16-mixed products need them.
    pub(crate) fn open(instance: &wgpu::Instance, adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        Self::open_with_limits(instance, adapter, adapter.limits())
    }

    /// [`GpuDevice::open`] with the device's limits set to `limits` instead
    /// of the adapter's (every limit check then holds against them).
    pub(crate) fn open_with_limits(
        instance: &wgpu::Instance,
        adapter: &wgpu::Adapter,
        limits: wgpu::Limits,
    ) -> Result<Self, GpuError> {
        let info = adapter.get_info();
        let features = adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgtrain device"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| GpuError::Device {
            adapter: info.name.clone(),
            message: e.to_string(),
        })?;
        log::info!(
            "opened {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        let fault = Arc::new(Mutex::new(None));
        let keep = |fault: &Arc<Mutex<Option<String>>>, message: String| {
            log::error!("GPU error: {message}");
            if let Ok(mut f) = fault.lock() {
                f.get_or_insert(message);
            }
        };
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| keep(&f, e.to_string())));
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            // Dropping the device on purpose also reports a loss.
            if reason != wgpu::DeviceLostReason::Destroyed {
                keep(&f, format!("device lost ({reason:?}): {message}"));
            }
        });
        Ok(GpuDevice {
            device,
            queue,
            info,
            limits,
            features,
            wgsl: instance.wgsl_language_features(),
            fault,
        })
    }

    /// Whether passes can write timestamps (`Features::TIMESTAMP_QUERY`).
    pub(crate) fn supports_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether the shaders may use WGSL's `f16` (`Features::SHADER_F16`),
    /// which the f16-mixed products need.
    pub(crate) fn supports_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether WGSL's packed 4x8 integer dot product (`dot4I8Packed`) is
    /// available to the shaders.
    pub(crate) fn supports_dot4_i8(&self) -> bool {
        self.wgsl
            .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct)
    }

    /// Fail with the first error wgpu reported since the last check.
    pub(crate) fn check_fault(&self) -> Result<(), GpuError> {
        match self.fault.lock().ok().and_then(|mut f| f.take()) {
            Some(message) => Err(GpuError::Other(message)),
            None => Ok(()),
        }
    }

    /// Check that a storage buffer of `bytes` fits the device.
    pub(crate) fn check_storage(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        let l = &self.limits;
        if bytes > l.max_storage_buffer_binding_size {
            return Err(GpuError::Limit {
                what: what.to_string(),
                needed: bytes,
                limit: l.max_storage_buffer_binding_size,
                limit_name: "max_storage_buffer_binding_size, bytes",
            });
        }
        if bytes > l.max_buffer_size {
            return Err(GpuError::Limit {
                what: what.to_string(),
                needed: bytes,
                limit: l.max_buffer_size,
                limit_name: "max_buffer_size, bytes",
            });
        }
        Ok(())
    }

    /// A storage buffer holding `contents` (at least 4 bytes, since WebGPU
    /// does not bind empty buffers), checked against the limits.
    pub(crate) fn storage_init(&self, label: &str, contents: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        self.check_storage(label, contents.len() as u64)?;
        let buf = self.storage(label, contents.len() as u64)?;
        if !contents.is_empty() {
            self.queue.write_buffer(&buf, 0, contents);
        }
        Ok(buf)
    }

    /// A zeroed storage buffer of `bytes` (rounded up to 4), checked
    /// against the limits, usable as a copy source and destination.
    pub(crate) fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let size = bytes.max(4).next_multiple_of(4);
        self.check_storage(label, size)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer holding `contents`, writable later.
    pub(crate) fn uniform_init(&self, label: &str, contents: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        let size = (contents.len() as u64).max(16).next_multiple_of(16);
        if size > self.limits.max_buffer_size {
            return Err(GpuError::Limit {
                what: label.to_string(),
                needed: size,
                limit: self.limits.max_buffer_size,
                limit_name: "max_buffer_size, bytes",
            });
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, contents);
        Ok(buf)
    }

    /// Copy byte ranges `(buffer, offset, len)` of GPU buffers to the host,
    /// after all work submitted so far (and `encoder`'s, if given): one
    /// staging buffer, one submit, one wait. Lengths must be multiples of 4.
    pub(crate) fn read_back(
        &self,
        encoder: Option<wgpu::CommandEncoder>,
        ranges: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        let total: u64 = ranges.iter().map(|r| r.2).sum();
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(ranges.len());
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback staging"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = encoder.unwrap_or_else(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            })
        });
        let mut at = 0;
        for &(buf, offset, len) in ranges {
            if len > 0 {
                enc.copy_buffer_to_buffer(buf, offset, &staging, at, len);
            }
            at += len;
        }
        let index = self.queue.submit([enc.finish()]);
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver only disappears if this function already returned.
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(format!("waiting for the GPU: {e}")))?;
        self.check_fault()?;
        rx.recv()
            .map_err(|_| GpuError::Readback("the map callback never ran".into()))?
            .map_err(|e| GpuError::Readback(format!("mapping the staging buffer: {e}")))?;
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Readback(format!("reading the staging buffer: {e}")))?;
            let mut at = 0usize;
            for &(_, _, len) in ranges {
                out.push(view[at..at + len as usize].to_vec());
                at += len as usize;
            }
        }
        staging.unmap();
        Ok(out)
    }

    /// Submit `work`, then `enc`, which copies into `staging` (MAP_READ |
    /// COPY_DST), wait for both, and copy the first `out.len()` floats of
    /// `staging` to `out`. Returns the host time until `work` was seen done,
    /// so that the rest of the wait is the copy and the mapping.
    pub(crate) fn read_staged(
        &self,
        work: wgpu::CommandEncoder,
        enc: wgpu::CommandEncoder,
        staging: &wgpu::Buffer,
        out: &mut [f32],
    ) -> Result<std::time::Duration, GpuError> {
        let t0 = std::time::Instant::now();
        let first = self.queue.submit([work.finish()]);
        let index = self.queue.submit([enc.finish()]);
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(first),
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(format!("waiting for the GPU: {e}")))?;
        let work_done = t0.elapsed();
        let bytes = 4 * out.len() as u64;
        if bytes == 0 {
            return Ok(work_done);
        }
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            // The receiver only disappears if this function already returned.
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(format!("waiting for the GPU: {e}")))?;
        self.check_fault()?;
        rx.recv()
            .map_err(|_| GpuError::Readback("the map callback never ran".into()))?
            .map_err(|e| GpuError::Readback(format!("mapping the staging buffer: {e}")))?;
        {
            let view = staging
                .get_mapped_range(..bytes)
                .map_err(|e| GpuError::Readback(format!("reading the staging buffer: {e}")))?;
            out.copy_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
        Ok(work_done)
    }

    /// Read `len` f32 values from the start of `buf`.
    pub(crate) fn read_f32(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_back(None, &[(buf, 0, 4 * len as u64)])?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[0]))
    }
}
