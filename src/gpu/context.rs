//! [`GpuContext`]: what every GPU user shares, an open device
//! (`device`) and the pipeline registry built on it
//! (`registry`, each pipeline compiled on first use).

use super::adapter::{self, AdapterReport, AdapterSelector};
use super::device::GpuDevice;
use super::registry::{Int8Path, Registry};
use crate::error::GpuError;

/// An open device: the adapter's identity and limits, the queue, and the
/// compiled pipelines (built on first use and shared by every user of the
/// context).
pub struct GpuContext {
    pub(crate) dev: GpuDevice,
    pub(crate) registry: Registry,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.dev.info.name)
            .finish()
    }
}

impl GpuContext {
    /// Find the adapter `sel` asks for and open a device on it.
    pub fn open(sel: &AdapterSelector) -> Result<Self, GpuError> {
        let (instance, adapter) = adapter::find(sel)?;
        Self::from_adapter(&instance, &adapter)
    }

    /// Open a device on `adapter` (one of `instance`'s) with its own limits,
    /// and with `TIMESTAMP_QUERY` and `SHADER_F16` when the adapter has them:
    /// they cost nothing until a pass asks for timestamps or a shader for
    /// f16, and [`crate::gpu::timing`] and the f16-mixed products need them.
    pub fn from_adapter(instance: &wgpu::Instance, adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        let dev = GpuDevice::open(instance, adapter)?;
        let registry = Registry::new(&dev);
        Ok(GpuContext { dev, registry })
    }

    /// Find the adapter `sel` asks for and open a device on it with
    /// `limits` instead of the adapter's own, e.g. `wgpu::Limits::default()`
    /// (WebGPU's defaults) to run as a browser's adapter would: buffers and
    /// kernels are then checked against those limits.
    ///
    /// # Errors
    ///
    /// [`GpuError::Device`] when the adapter cannot meet `limits`.
    pub fn open_with_limits(sel: &AdapterSelector, limits: wgpu::Limits) -> Result<Self, GpuError> {
        let (instance, adapter) = adapter::find(sel)?;
        let dev = GpuDevice::open_with_limits(&instance, &adapter, limits)?;
        let registry = Registry::new(&dev);
        Ok(GpuContext { dev, registry })
    }

    /// The adapter's name, e.g. `NVIDIA GeForce RTX 4090` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub fn name(&self) -> &str {
        &self.dev.info.name
    }

    /// The device as every benchmark line and backend names it: the
    /// adapter's name, graphics API and device type, e.g.
    /// `NVIDIA H200 (Vulkan, DiscreteGpu)`.
    pub fn label(&self) -> String {
        let r = self.report();
        format!("{} ({}, {})", r.name, r.backend, r.device_type)
    }

    /// True for software adapters such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.dev.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The adapter's identity and the limits that matter here.
    pub fn report(&self) -> AdapterReport {
        AdapterReport::new(&self.dev.info, &self.dev.limits)
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.dev.limits
    }

    /// Whether passes can write timestamps (`Features::TIMESTAMP_QUERY`).
    pub fn supports_timestamps(&self) -> bool {
        self.dev.supports_timestamps()
    }

    /// Whether the shaders may use WGSL's `f16` (`Features::SHADER_F16`),
    /// which `--precision f16-mixed` needs.
    pub fn supports_f16(&self) -> bool {
        self.dev.supports_f16()
    }

    /// Whether WGSL's packed 4x8 integer dot product (`dot4I8Packed`) is
    /// available to the shaders; without it the int8 kernels unpack bytes
    /// by hand ([`Int8Path::Unpacked`]).
    pub fn supports_dot4_i8(&self) -> bool {
        self.dev.supports_dot4_i8()
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
}
