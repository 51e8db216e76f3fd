//! Finding an adapter, opening a device on it, and the few buffer helpers
//! every other GPU module shares (limit-checked creation, blocking readback).
//!
//! The device is opened with the adapter's own limits rather than WebGPU's
//! conservative defaults: the defaults cap a storage binding at 128 MiB,
//! which Fashion-MNIST as f32 (188 MB) would not fit, while every desktop
//! adapter allows far more.

use std::sync::{mpsc, Arc, Mutex, OnceLock};

use serde::Serialize;

use super::int8::{Int8Kernels, Int8Path};
use super::kernels::Kernels;
use crate::error::GpuError;

/// Which adapter to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterSelector {
    /// The first hardware adapter (any device type but `Cpu`), discrete
    /// GPUs first.
    Hardware,
    /// A hardware adapter when there is one, else a software one (such as
    /// Mesa's lavapipe).
    Any,
    /// The first adapter whose name contains this text, case-insensitively.
    Named(String),
}

/// What `wgtrain devices` prints about an adapter: who it is and the limits
/// that decide which models and batches fit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
}

impl AdapterReport {
    fn new(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Self {
        AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        }
    }
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(f, "{} ({}, {})", self.name, self.backend, self.device_type)?;
        let driver = match (self.driver.is_empty(), self.driver_info.is_empty()) {
            (true, _) => "unknown".to_string(),
            (false, true) => self.driver.clone(),
            (false, false) => format!("{} {}", self.driver, self.driver_info),
        };
        writeln!(f, "  driver: {driver}")?;
        writeln!(
            f,
            "  max storage binding: {:.0} MiB, max buffer: {:.0} MiB",
            mib(self.max_storage_buffer_binding_size),
            mib(self.max_buffer_size)
        )?;
        write!(
            f,
            "  max workgroups per dimension: {}, invocations per workgroup: {}, workgroup storage: {} KiB",
            self.max_compute_workgroups_per_dimension,
            self.max_compute_invocations_per_workgroup,
            self.max_compute_workgroup_storage_size / 1024
        )
    }
}

/// The adapters of `backends` (`WGPU_BACKEND` overrides) with the instance
/// that owns them.
fn adapters_of(backends: wgpu::Backends) -> (wgpu::Instance, Vec<wgpu::Adapter>) {
    let backends = backends.with_env();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let found = pollster::block_on(instance.enumerate_adapters(backends));
    (instance, found)
}

/// The adapters of the native APIs (Vulkan, Metal, DX12), or of OpenGL when
/// there are none: OpenGL's compute support is the weakest, it usually
/// shows the same device a second time, and probing it without a display
/// prints EGL errors. `WGPU_BACKEND=gl` (or any list) overrides the choice.
fn adapters() -> (wgpu::Instance, Vec<wgpu::Adapter>) {
    let (instance, mut found) = adapters_of(wgpu::Backends::PRIMARY);
    if found.is_empty() {
        let (gl_instance, gl) = adapters_of(wgpu::Backends::SECONDARY);
        if !gl.is_empty() {
            return (gl_instance, gl);
        }
    }
    sort_by_preference(&mut found);
    (instance, found)
}

/// Every adapter wgpu can see, in the order [`AdapterSelector::Any`] would
/// consider them.
pub fn list_adapters() -> Vec<AdapterReport> {
    let (_instance, found) = adapters();
    found
        .iter()
        .map(|a| AdapterReport::new(&a.get_info(), &a.limits()))
        .collect()
}

/// Discrete before integrated before virtual and unknown, software last;
/// within a type, native APIs before OpenGL, whose compute support is the
/// weakest (when it is listed at all). The sort is stable, so the driver's order breaks ties.
fn sort_by_preference(adapters: &mut [wgpu::Adapter]) {
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        let ty = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        (ty, info.backend == wgpu::Backend::Gl)
    });
}

fn is_hardware(a: &wgpu::Adapter) -> bool {
    a.get_info().device_type != wgpu::DeviceType::Cpu
}

/// An open device: the adapter's identity and limits, the queue, and the
/// compiled pipelines (built on first use and shared by every user of the
/// context).
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// The features the device was opened with: the adapter's
    /// `TIMESTAMP_QUERY` when it has it, nothing else.
    features: wgpu::Features,
    /// The WGSL language extensions the shader compiler accepts.
    wgsl: wgpu::WgslLanguageFeatures,
    kernels: OnceLock<Kernels>,
    /// The int8 pipelines, per dot-product path ([`Int8Path`]).
    int8: [OnceLock<Int8Kernels>; 2],
    /// The first error wgpu reported outside an error scope (or the device
    /// loss), kept to be returned by the next readback instead of wgpu's
    /// default of panicking.
    fault: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext").field("adapter", &self.info.name).finish()
    }
}

impl GpuContext {
    /// Find the adapter `sel` asks for and open a device on it.
    pub fn open(sel: &AdapterSelector) -> Result<Self, GpuError> {
        // The instance must outlive the adapter only until the device is open.
        let (instance, found) = adapters();
        let seen = || {
            if found.is_empty() {
                "; wgpu sees no adapter at all (is a Vulkan, Metal or DX12 driver installed?)".to_string()
            } else {
                let names: Vec<String> = found
                    .iter()
                    .map(|a| {
                        let i = a.get_info();
                        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
                    })
                    .collect();
                format!("; adapters seen: {}", names.join(", "))
            }
        };
        let chosen = match sel {
            AdapterSelector::Hardware => found.iter().find(|a| is_hardware(a)).ok_or_else(|| {
                GpuError::NoAdapter(format!(
                    " (hardware only: software adapters are skipped; use --device gpu to allow them){}",
                    seen()
                ))
            })?,
            // Sorted, so a hardware adapter comes first when there is one.
            AdapterSelector::Any => found.first().ok_or_else(|| GpuError::NoAdapter(seen()))?,
            AdapterSelector::Named(name) => {
                let needle = name.to_lowercase();
                found
                    .iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                    .ok_or_else(|| GpuError::NoAdapter(format!(" whose name contains `{name}`{}", seen())))?
            }
        };
        Self::from_adapter(&instance, chosen)
    }

    /// Open a device on `adapter` (one of `instance`'s) with its own limits,
    /// and with `TIMESTAMP_QUERY` when the adapter has it: it costs nothing
    /// until a pass asks for timestamps, and [`crate::gpu::timing`] needs it.
    pub fn from_adapter(instance: &wgpu::Instance, adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
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
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            features,
            wgsl: instance.wgsl_language_features(),
            kernels: OnceLock::new(),
            int8: [OnceLock::new(), OnceLock::new()],
            fault,
        })
    }

    /// The adapter's name, e.g. `NVIDIA GeForce RTX 4090` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// True for software adapters such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The adapter's identity and the limits that matter here.
    pub fn report(&self) -> AdapterReport {
        AdapterReport::new(&self.info, &self.limits)
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether passes can write timestamps (`Features::TIMESTAMP_QUERY`).
    pub fn supports_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether WGSL's packed 4x8 integer dot product (`dot4I8Packed`) is
    /// available to the shaders; without it the int8 kernels unpack bytes
    /// by hand ([`Int8Path::Unpacked`]).
    pub fn supports_dot4_i8(&self) -> bool {
        self.wgsl
            .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct)
    }

    /// The int8 dot-product path the kernels use by default: the packed
    /// built-in when the compiler has it.
    pub fn int8_path(&self) -> Int8Path {
        if self.supports_dot4_i8() {
            Int8Path::Dot4
        } else {
            Int8Path::Unpacked
        }
    }

    /// The int8 pipelines of `path`, compiled on first use.
    pub(crate) fn int8_kernels(&self, path: Int8Path) -> Result<&Int8Kernels, GpuError> {
        if path == Int8Path::Dot4 && !self.supports_dot4_i8() {
            return Err(GpuError::InvalidArgument(
                "the WGSL compiler lacks packed_4x8_integer_dot_product (dot4I8Packed); use the unpacked path".into(),
            ));
        }
        let cell = &self.int8[path as usize];
        if let Some(k) = cell.get() {
            return Ok(k);
        }
        let k = Int8Kernels::new(self, path)?;
        Ok(cell.get_or_init(|| k))
    }

    /// Fail with the first error wgpu reported since the last check.
    pub(crate) fn check_fault(&self) -> Result<(), GpuError> {
        match self.fault.lock().ok().and_then(|mut f| f.take()) {
            Some(message) => Err(GpuError::Other(message)),
            None => Ok(()),
        }
    }

    /// The pipelines, compiled on first use.
    pub(crate) fn kernels(&self) -> Result<&Kernels, GpuError> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let k = Kernels::new(self)?;
        // A concurrent first call may have won the race; either value is fine.
        Ok(self.kernels.get_or_init(|| k))
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

    /// Read `len` f32 values from the start of `buf`.
    pub(crate) fn read_f32(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_back(None, &[(buf, 0, 4 * len as u64)])?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[0]))
    }
}
