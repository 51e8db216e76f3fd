//! Every WGSL module, composed as the pipelines compose it
//! (`every_module`), translated for each backend wgpu drives and
//! checked against WebGPU's default limits, so that a kernel which would not
//! compile for Metal or DX12, or would not fit a WebGPU adapter, fails here
//! rather than on a machine nobody tested on.
//!
//! - The WGSL is validated by naga's `Validator` with no optional capability
//!   at all (`Capabilities::empty()`): no kernel needs one, but for the
//!   f16-mixed matmul modules, which need `SHADER_FLOAT16` (the registry
//!   builds them only on a device opened with `SHADER_F16`; their SPIR-V
//!   baseline adds `Float16`, and their HLSL needs shader model 6.2 or
//!   later, so only 6.4 is written for them). The packed int8
//!   dot product is a WGSL language extension
//!   (`packed_4x8_integer_dot_product`), not a capability; the registry
//!   asks the adapter for it before it builds that variant.
//! - Every entry point is written as SPIR-V, MSL and HLSL, with the
//!   bounds-check policies of checked and of unchecked modules (matmul.wgsl
//!   is compiled unchecked, registry.rs). The SPIR-V, written with the
//!   `Shader` capability alone, is read back by naga's SPIR-V front end and
//!   validated again; MSL and HLSL have no parser in
//!   naga, so for them the writer's own checks (it refuses what the target
//!   cannot express, e.g. a shader model too low) and the entry point's
//!   presence in the output are what is checked. MSL is written for 2.0 (the
//!   oldest wgpu's Metal backend meets) and 3.0, with the per-entry-point
//!   resource map wgpu builds; HLSL for shader model 5.1 (FXC) and 6.4
//!   (DXC, with `dot4add_i8packed`).
//! - Each entry point's storage buffers, workgroup memory and workgroup
//!   size are compared with `wgpu::Limits::default()` (WebGPU's defaults).

use crate::backend::Precision;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage};

use super::registry::Int8Path;
use super::shaders;
use super::tile::Tile;

/// Every module the pipelines compile (registry.rs), composed as they
/// compose it, with the name of its file (and variant): each matmul tile,
/// each linear_forward_i8 prelude and the files compiled as they are.
fn every_module() -> Vec<(String, String)> {
    let mut modules: Vec<(String, String)> = Tile::ALL
        .iter()
        .flat_map(|&t| {
            [Precision::F32, Precision::F16Mixed].map(|p| {
                (
                    format!("matmul.wgsl ({} tiles, {})", t.name(), p.name()),
                    shaders::matmul(t, p),
                )
            })
        })
        .collect();
    for path in [Int8Path::Dot4, Int8Path::Unpacked] {
        modules.push((
            format!("linear_forward_i8.wgsl ({})", path.name()),
            shaders::linear_forward_i8(path == Int8Path::Dot4),
        ));
    }
    for (name, src) in [
        ("softmax_xent.wgsl", shaders::SOFTMAX_XENT),
        ("soft_target_xent.wgsl", shaders::SOFT_TARGET_XENT),
        ("bias_update.wgsl", shaders::BIAS_UPDATE),
        ("apply_mask.wgsl", shaders::APPLY_MASK),
        ("optim_update.wgsl", shaders::OPTIM_UPDATE),
        ("clip_grad_norm.wgsl", shaders::CLIP_GRAD_NORM),
        ("quantize_rows_i8.wgsl", shaders::QUANTIZE_ROWS_I8),
    ] {
        modules.push((name.to_string(), src.to_string()));
    }
    modules
}

/// `source` parsed and validated with no optional capability.
fn parse(name: &str, source: &str) -> Result<(Module, ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    let info = validate(&module).map_err(|e| format!("{name}: {e}"))?;
    Ok((module, info))
}

/// Whether `module` uses WGSL's `f16` (the f16-mixed matmul modules).
fn uses_f16(module: &Module) -> bool {
    let half_type = module.types.iter().any(|(_, t)| {
        matches!(
            t.inner,
            naga::TypeInner::Scalar(naga::Scalar {
                kind: naga::ScalarKind::Float,
                width: 2
            })
        )
    });
    let half_cast = |f: &naga::Function| {
        f.expressions.iter().any(|(_, e)| {
            matches!(
                e,
                naga::Expression::As {
                    kind: naga::ScalarKind::Float,
                    convert: Some(2),
                    ..
                }
            )
        })
    };
    half_type
        || module.functions.iter().any(|(_, f)| half_cast(f))
        || module.entry_points.iter().any(|e| half_cast(&e.function))
}

fn validate(module: &Module) -> Result<ModuleInfo, String> {
    let caps = if uses_f16(module) {
        Capabilities::SHADER_FLOAT16
    } else {
        Capabilities::empty()
    };
    Validator::new(ValidationFlags::all(), caps)
        .validate(module)
        .map_err(|e| format!("{:?}", e.into_inner()))
}

fn policies(checked: bool) -> naga::proc::BoundsCheckPolicies {
    let policy = if checked {
        naga::proc::BoundsCheckPolicy::Restrict
    } else {
        naga::proc::BoundsCheckPolicy::Unchecked
    };
    naga::proc::BoundsCheckPolicies {
        index: policy,
        buffer: policy,
        image_load: policy,
        binding_array: policy,
    }
}

/// The global variables with a binding that entry point `ep` uses.
fn used_bindings(module: &Module, info: &ModuleInfo, ep: usize) -> Vec<(naga::ResourceBinding, AddressSpace)> {
    let ep_info = info.get_entry_point(ep);
    module
        .global_variables
        .iter()
        .filter(|(h, _)| !ep_info[*h].is_empty())
        .filter_map(|(_, g)| g.binding.map(|b| (b, g.space)))
        .collect()
}

/// Entry point `ep` of `module` as SPIR-V. Written with the `Shader`
/// capability alone (Vulkan's baseline; the packed dot product then gets
/// naga's polyfill), it is read back and validated; written with every
/// capability (what a device with integer dot products gets: `OpSDot`), it
/// is only written, since naga's SPIR-V front end does not read
/// `DotProduct`.
fn spirv(module: &Module, info: &ModuleInfo, ep: usize, checked: bool) -> Result<(), String> {
    let entry = &module.entry_points[ep];
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: entry.stage,
        entry_point: entry.name.clone(),
    };
    let write = |capabilities| {
        let options = naga::back::spv::Options {
            bounds_check_policies: policies(checked),
            capabilities,
            ..Default::default()
        };
        naga::back::spv::write_vec(module, info, &options, Some(&pipeline))
    };
    write(None).map_err(|e| format!("write with every capability: {e}"))?;
    let mut baseline: naga::FastHashSet<_> = [naga::back::spv::Capability::Shader].into_iter().collect();
    if uses_f16(module) {
        baseline.insert(naga::back::spv::Capability::Float16);
    }
    let words = write(Some(baseline)).map_err(|e| format!("write with Shader alone: {e}"))?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let back = naga::front::spv::parse_u8_slice(
        &bytes,
        &naga::front::spv::Options {
            // The writer declares the 16-bit storage capabilities with
            // Float16, which naga's reader does not list as supported.
            strict_capabilities: !uses_f16(module),
            ..Default::default()
        },
    )
    .map_err(|e| format!("read back: {e}"))?;
    if !back.entry_points.iter().any(|e| e.name == entry.name) {
        return Err("the entry point is missing from the SPIR-V".into());
    }
    validate(&back).map(|_| ()).map_err(|e| format!("re-validate: {e}"))
}

/// Entry point `ep` as MSL `version`, bound as wgpu's Metal backend binds
/// it: one buffer slot per used binding, plus the sizes buffer.
fn msl(module: &Module, info: &ModuleInfo, ep: usize, checked: bool, version: (u8, u8)) -> Result<(), String> {
    let entry = &module.entry_points[ep];
    let mut resources = naga::back::msl::EntryPointResources::default();
    let bindings = used_bindings(module, info, ep);
    for (slot, (binding, space)) in bindings.iter().enumerate() {
        let target = naga::back::msl::BindTarget {
            buffer: Some(slot as u8),
            mutable: matches!(space, AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE)),
            ..Default::default()
        };
        resources.resources.insert(*binding, target);
    }
    resources.sizes_buffer = Some(bindings.len() as u8);
    let options = naga::back::msl::Options {
        lang_version: version,
        per_entry_point_map: [(entry.name.clone(), resources)].into_iter().collect(),
        fake_missing_bindings: false,
        bounds_check_policies: policies(checked),
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions {
        entry_point: Some((entry.stage, entry.name.clone())),
        ..Default::default()
    };
    let (text, _) = naga::back::msl::write_string(module, info, &options, &pipeline).map_err(|e| format!("{e}"))?;
    if !text.contains(&format!("kernel void {}", entry.name)) {
        return Err("the kernel is missing from the MSL".into());
    }
    Ok(())
}

/// Entry point `ep` as HLSL for `model`.
fn hlsl(
    module: &Module,
    info: &ModuleInfo,
    ep: usize,
    checked: bool,
    model: naga::back::hlsl::ShaderModel,
) -> Result<(), String> {
    let entry = &module.entry_points[ep];
    let options = naga::back::hlsl::Options {
        shader_model: model,
        restrict_indexing: checked,
        ..Default::default()
    };
    let pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((entry.stage, entry.name.clone())),
    };
    let mut text = String::new();
    let reflection = naga::back::hlsl::Writer::new(&mut text, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| format!("{e}"))?;
    let written = reflection
        .entry_point_names
        .first()
        .ok_or("no entry point written")?
        .as_ref()
        .map_err(|e| format!("{e}"))?;
    if !text.contains(&format!("void {written}(")) {
        return Err("the entry point is missing from the HLSL".into());
    }
    Ok(())
}

/// Every way entry point `ep` of `module` would not compile: one line per
/// backend and configuration that fails.
fn translation_failures(module: &Module, info: &ModuleInfo, ep: usize) -> Vec<String> {
    use naga::back::hlsl::ShaderModel;
    let mut failures = Vec::new();
    for checked in [true, false] {
        let mode = if checked { "checked" } else { "unchecked" };
        if let Err(e) = spirv(module, info, ep, checked) {
            failures.push(format!("SPIR-V ({mode}): {e}"));
        }
        for version in [(2, 0), (3, 0)] {
            if let Err(e) = msl(module, info, ep, checked, version) {
                failures.push(format!("MSL {}.{} ({mode}): {e}", version.0, version.1));
            }
        }
        for model in [ShaderModel::V5_1, ShaderModel::V6_4] {
            if uses_f16(module) && model == ShaderModel::V5_1 {
                continue;
            }
            if let Err(e) = hlsl(module, info, ep, checked, model) {
                failures.push(format!("HLSL {} ({mode}): {e}", model.to_str()));
            }
        }
    }
    failures
}

/// What entry point `ep` needs of an adapter's limits.
#[derive(Debug, PartialEq)]
struct Needs {
    storage_buffers: u32,
    uniform_buffers: u32,
    bindings_per_group: u32,
    workgroup_bytes: u32,
    workgroup_size: [u32; 3],
}

fn needs(module: &Module, info: &ModuleInfo, ep: usize) -> Needs {
    let mut layouter = naga::proc::Layouter::default();
    // The module has been validated, so its types lay out.
    let laid_out = layouter.update(module.to_ctx()).is_ok();
    assert!(laid_out, "a validated module lays out");
    let ep_info = info.get_entry_point(ep);
    let used: Vec<&naga::GlobalVariable> = module
        .global_variables
        .iter()
        .filter(|(h, _)| !ep_info[*h].is_empty())
        .map(|(_, g)| g)
        .collect();
    let count = |f: &dyn Fn(AddressSpace) -> bool| used.iter().filter(|g| g.binding.is_some() && f(g.space)).count();
    let mut per_group: std::collections::BTreeMap<u32, u32> = Default::default();
    for g in &used {
        if let Some(b) = g.binding {
            let n = per_group.entry(b.group).or_default();
            *n = (*n).max(b.binding + 1);
        }
    }
    // WebGPU rounds each workgroup variable up to 16 bytes.
    let workgroup_bytes = used
        .iter()
        .filter(|g| g.space == AddressSpace::WorkGroup)
        .map(|g| layouter[g.ty].size.div_ceil(16) * 16)
        .sum();
    Needs {
        storage_buffers: count(&|s| matches!(s, AddressSpace::Storage { .. })) as u32,
        uniform_buffers: count(&|s| s == AddressSpace::Uniform) as u32,
        bindings_per_group: per_group.values().copied().max().unwrap_or(0),
        workgroup_bytes,
        workgroup_size: module.entry_points[ep].workgroup_size,
    }
}

/// The limits of `limits` that `needs` exceeds, named as wgpu names them.
fn over(needs: &Needs, limits: &wgpu::Limits) -> Vec<String> {
    let [x, y, z] = needs.workgroup_size;
    let checks = [
        (
            "max_storage_buffers_per_shader_stage",
            needs.storage_buffers,
            limits.max_storage_buffers_per_shader_stage,
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            needs.uniform_buffers,
            limits.max_uniform_buffers_per_shader_stage,
        ),
        (
            "max_bindings_per_bind_group",
            needs.bindings_per_group,
            limits.max_bindings_per_bind_group,
        ),
        (
            "max_compute_workgroup_storage_size",
            needs.workgroup_bytes,
            limits.max_compute_workgroup_storage_size,
        ),
        (
            "max_compute_invocations_per_workgroup",
            x * y * z,
            limits.max_compute_invocations_per_workgroup,
        ),
        ("max_compute_workgroup_size_x", x, limits.max_compute_workgroup_size_x),
        ("max_compute_workgroup_size_y", y, limits.max_compute_workgroup_size_y),
        ("max_compute_workgroup_size_z", z, limits.max_compute_workgroup_size_z),
    ];
    checks
        .iter()
        .filter(|(_, need, limit)| need > limit)
        .map(|(name, need, limit)| format!("{name}: needs {need}, the limit is {limit}"))
        .collect()
}

/// Every kernel (module and entry point) with what `check` finds wrong.
fn every_kernel(check: impl Fn(&Module, &ModuleInfo, usize) -> Vec<String>) -> (usize, Vec<String>) {
    let mut kernels = 0;
    let mut failures = Vec::new();
    for (name, source) in every_module() {
        let (module, info) = match parse(&name, &source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for (ep, entry) in module.entry_points.iter().enumerate() {
            kernels += 1;
            if entry.stage != ShaderStage::Compute {
                failures.push(format!("{name} {}: not a compute entry point", entry.name));
            }
            for e in check(&module, &info, ep) {
                failures.push(format!("{name} {}: {e}", entry.name));
            }
        }
    }
    (kernels, failures)
}

#[test]
fn every_file_of_shaders_is_in_a_composed_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let modules = every_module();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("shaders/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("a WGSL file is UTF-8");
        assert!(
            modules.iter().any(|(_, src)| src.contains(&text)),
            "{} is in no module of every_module",
            path.display()
        );
    }
    assert!(files >= 11, "shaders/ holds {files} WGSL files");
}

#[test]
fn every_kernel_translates_for_metal_dx12_and_vulkan() {
    let (kernels, failures) = every_kernel(translation_failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Four matmul tiles of several entry points each, and the others.
    assert!(kernels > 11, "{kernels} entry points");
}

#[test]
fn every_kernel_fits_webgpu_default_limits() {
    let limits = wgpu::Limits::default();
    let (kernels, failures) = every_kernel(|m, i, ep| over(&needs(m, i, ep), &limits));
    assert!(
        failures.is_empty(),
        "kernels over WebGPU's default limits:\n{}",
        failures.join("\n")
    );
    assert!(kernels > 11, "{kernels} entry points");
}

/// linear_softmax_xent is in every matmul module these tests check, and
/// binds exactly WebGPU's default 8 storage buffers (the labels take the
/// dataset's binding); no other matmul entry point binds its stats.
#[test]
fn the_fused_loss_kernel_is_in_every_matmul_module_within_the_limits() {
    let limits = wgpu::Limits::default();
    let mut seen = 0;
    for (name, source) in every_module().iter().filter(|(n, _)| n.starts_with("matmul.wgsl")) {
        let (module, info) = parse(name, source).expect("matmul.wgsl parses");
        let ep = module
            .entry_points
            .iter()
            .position(|e| e.name == "linear_softmax_xent")
            .unwrap_or_else(|| panic!("{name} has no linear_softmax_xent"));
        let n = needs(&module, &info, ep);
        assert_eq!(n.storage_buffers, 8, "{name}: {n:?}");
        assert_eq!(n.bindings_per_group, 10, "{name}: {n:?}");
        assert_eq!(over(&n, &limits), Vec::<String>::new(), "{name}");
        for (i, e) in module.entry_points.iter().enumerate() {
            if e.name != "linear_softmax_xent" {
                assert!(needs(&module, &info, i).storage_buffers <= 7, "{name} {}", e.name);
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 2 * Tile::ALL.len());
}

/// The limit check catches a kernel over each limit, the validation one that
/// needs a capability; the packed dot product translates for every target.
#[test]
fn the_checks_catch_a_kernel_that_would_not_fit_or_translate() {
    let limits = wgpu::Limits::default();
    let storage: String = (0..9)
        .map(|i| format!("@group(0) @binding({i}) var<storage, read_write> b{i}: array<f32>;\n"))
        .collect();
    let body: String = (0..9).map(|i| format!("b{i}[0] = 1.0;")).collect();
    let nine = format!("{storage}@compute @workgroup_size(64) fn k() {{ {body} }}");
    let big_tile =
        "var<workgroup> t: array<f32, 4097>;\n@group(0) @binding(0) var<storage, read_write> o: array<f32>;\n\
         @compute @workgroup_size(64) fn k() { t[0] = 1.0; workgroupBarrier(); o[0] = t[0]; }";
    let wide = "@compute @workgroup_size(16, 32) fn k() {}";
    let deep = "@compute @workgroup_size(1, 1, 65) fn k() {}";
    for (src, limit) in [
        (nine.as_str(), "max_storage_buffers_per_shader_stage"),
        (big_tile, "max_compute_workgroup_storage_size"),
        (wide, "max_compute_invocations_per_workgroup"),
        (deep, "max_compute_workgroup_size_z"),
    ] {
        let (m, i) = parse("test", src).expect("the test shader is valid WGSL");
        let found = over(&needs(&m, &i, 0), &limits);
        assert!(
            found.iter().any(|f| f.starts_with(limit)),
            "{limit} not caught: {found:?}"
        );
    }
    // An unused binding does not count; a 4096-float tile is exactly 16 KiB.
    let fits = "var<workgroup> t: array<f32, 4096>;\n@group(0) @binding(0) var<storage, read_write> o: array<f32>;\n\
         @group(0) @binding(1) var<storage, read_write> unused: array<f32>;\n\
         @compute @workgroup_size(256) fn k() { t[0] = 1.0; workgroupBarrier(); o[0] = t[0]; }";
    let (m, i) = parse("test", fits).expect("the test shader is valid WGSL");
    assert_eq!(over(&needs(&m, &i, 0), &limits), Vec::<String>::new());

    // A 64-bit integer needs a capability the validation does not grant.
    assert!(parse("test", "@compute @workgroup_size(1) fn k() { var x: i64 = 1li; }").is_err());
    // The packed dot product needs shader model 6.4 for its intrinsic;
    // below that naga writes a polyfill, so both translate.
    let dot4 =
        "requires packed_4x8_integer_dot_product;\n@group(0) @binding(0) var<storage, read_write> o: array<i32>;\n\
         @compute @workgroup_size(1) fn k() { o[0] = dot4I8Packed(1u, 2u); }";
    let (m, i) = parse("test", dot4).expect("the test shader is valid WGSL");
    assert_eq!(translation_failures(&m, &i, 0), Vec::<String>::new());
}
