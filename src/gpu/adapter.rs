//! Finding an adapter: the ones wgpu can see, in order of preference, the
//! one an [`AdapterSelector`] picks, and the [`AdapterReport`] that
//! `wgtrain devices` prints about each.

use serde::Serialize;

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
    /// The adapter at this position of [`list_adapters`] (as `wgtrain
    /// devices` numbers them).
    Index(usize),
}

/// What `wgtrain devices` prints about an adapter: who it is and the limits
/// that decide which models and batches fit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AdapterReport {
    /// The adapter's name, as the driver reports it.
    pub name: String,
    /// The graphics API wgpu reaches it through (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// wgpu's device type: `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`,
    /// `Cpu` (a software renderer) or `Other`.
    pub device_type: String,
    /// The driver's name (may be empty).
    pub driver: String,
    /// The driver's version text (may be empty).
    pub driver_info: String,
    /// The largest storage buffer one binding may hold, in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// The largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// The most workgroups one dispatch dimension may count.
    pub max_compute_workgroups_per_dimension: u32,
    /// The most invocations (threads) one workgroup may hold.
    pub max_compute_invocations_per_workgroup: u32,
    /// The most workgroup shared memory, in bytes.
    pub max_compute_workgroup_storage_size: u32,
}

impl AdapterReport {
    pub(crate) fn new(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Self {
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

/// The adapter `sel` asks for, with the instance that owns it (which must
/// outlive the adapter until a device is open on it).
pub(crate) fn find(sel: &AdapterSelector) -> Result<(wgpu::Instance, wgpu::Adapter), GpuError> {
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
                " (hardware only: software adapters are skipped unless any adapter is asked for){}",
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
        AdapterSelector::Index(i) => found.get(*i).ok_or_else(|| {
            GpuError::NoAdapter(format!(
                " numbered {i}: there are {} (numbered from 0 as `wgtrain devices` prints them){}",
                found.len(),
                seen()
            ))
        })?,
    };
    Ok((instance, chosen.clone()))
}
