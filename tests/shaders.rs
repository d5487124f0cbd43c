//! Every shader variant the engine can request parses and validates with naga and translates to
//! SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12), on every capability tier. A shader that would
//! break on a Mac or under DX12 fails here, with no GPU needed.
//!
//! The cooperative-matrix kernels (`enable wgpu_cooperative_matrix`) are validated with naga's
//! COOPERATIVE_MATRIX capability and translated to SPIR-V and MSL only: naga 30 has no HLSL for them
//! (DX12 lists no configurations), and only on the subgroup tier (they need subgroup ids). Their
//! emulated variants (`COOP_EMU`, plain WGSL with f16) go through every backend like the rest.

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};
use zhinao::gpu::Caps;

fn tiers() -> [Caps; 2] {
    let on = Caps { shader_f16: false, subgroups: true, subgroup_min: 32, subgroup_max: 32, ..Default::default() };
    [on, Caps { subgroups: false, ..on }]
}

#[test]
fn every_variant_validates_and_translates() {
    let kernels = zhinao::ops::all_kernels();
    assert!(!kernels.is_empty());
    let mut failures = Vec::new();
    for caps in tiers() {
        for k in &kernels {
            let name = format!("{}::{} {:?} subgroups={}", k.shader, k.entry, k.defines, caps.subgroups);
            let src = match k.wgsl(&caps) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{name}: preprocess: {e}"));
                    continue;
                }
            };
            let module = match naga::front::wgsl::parse_str(&src) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{name}: parse: {}", e.emit_to_string(&src)));
                    continue;
                }
            };
            let coop = src.contains("enable wgpu_cooperative_matrix;");
            if coop && !caps.subgroups {
                continue;
            }
            if !module.entry_points.iter().any(|ep| ep.name == k.entry) {
                failures.push(format!("{name}: no entry point '{}'", k.entry));
                continue;
            }
            // unpack2x16float is core WGSL; naga tracks it as a capability that wgpu grants on every backend we target.
            let mut caps_n = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
            if caps.subgroups {
                caps_n |= Capabilities::SUBGROUP | Capabilities::SUBGROUP_BARRIER;
            }
            if src.contains("enable f16;") {
                caps_n |= Capabilities::SHADER_FLOAT16;
            }
            if coop {
                caps_n |= Capabilities::COOPERATIVE_MATRIX;
            }
            let info = match Validator::new(ValidationFlags::all(), caps_n)
                .subgroup_stages(ShaderStages::COMPUTE)
                .subgroup_operations(SubgroupOperationSet::all())
                .validate(&module)
            {
                Ok(i) => i,
                Err(e) => {
                    failures.push(format!("{name}: validate: {}", e.emit_to_string(&src)));
                    continue;
                }
            };
            let stage = (naga::ShaderStage::Compute, k.entry.to_string());
            let spv_opts = spv::Options { lang_version: (1, 3), ..Default::default() };
            let spv_pipe =
                spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: k.entry.to_string() };
            if let Err(e) = spv::write_vec(&module, &info, &spv_opts, Some(&spv_pipe)) {
                failures.push(format!("{name}: SPIR-V: {e}"));
            }
            let msl_opts = msl::Options { lang_version: (2, 4), fake_missing_bindings: true, ..Default::default() };
            let msl_pipe = msl::PipelineOptions { entry_point: Some(stage.clone()), ..Default::default() };
            if let Err(e) = msl::write_string(&module, &info, &msl_opts, &msl_pipe) {
                failures.push(format!("{name}: MSL: {e}"));
            }
            if coop {
                continue; // naga 30's HLSL writer has no cooperative matrices (`unimplemented!`)
            }
            let hlsl_opts = hlsl::Options {
                shader_model: hlsl::ShaderModel::V6_2,
                fake_missing_bindings: true,
                ..Default::default()
            };
            let hlsl_pipe = hlsl::PipelineOptions { entry_point: Some(stage) };
            let mut out = String::new();
            if let Err(e) = hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl_pipe).write(&module, &info, None) {
                failures.push(format!("{name}: HLSL: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variants failed:\n{}",
        failures.len(),
        kernels.len() * 2,
        failures.join("\n")
    );
}

/// The coop kernels are all listed, native and emulated, and their native WGSL really uses the
/// cooperative-matrix intrinsics (a variant silently compiled without them would test nothing).
#[test]
fn coop_variants_are_listed() {
    let caps = tiers()[0];
    let kernels = zhinao::ops::all_kernels();
    for shader in ["matmul_coop", "attention_coop"] {
        let mine: Vec<_> = kernels.iter().filter(|k| k.shader == shader).collect();
        let emu = mine.iter().filter(|k| k.defines.iter().any(|(d, _)| d == "COOP_EMU")).count();
        assert!(emu > 0 && emu < mine.len(), "{shader}: {emu} emulated of {}", mine.len());
        for k in mine {
            let src: String = k
                .wgsl(&caps)
                .unwrap()
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let native = !k.defines.iter().any(|(d, _)| d == "COOP_EMU");
            for word in ["coopMultiplyAdd", "coopLoad", "coopStoreT", "enable wgpu_cooperative_matrix;"] {
                assert_eq!(src.contains(word), native, "{shader} {:?}: '{word}'", k.defines);
            }
        }
    }
}

/// Opt-in: with `ZHINAO_SPIRV_VAL=/path/to/spirv-val` (SPIRV-Tools 2025 or newer knows
/// SPV_KHR_cooperative_matrix), every variant's SPIR-V, written with the options wgpu 30 uses on a
/// Vulkan 1.3 device (SPIR-V 1.6, restricted indices, loop bounding), must pass `spirv-val
/// --target-env vulkan1.3`. naga gives arrays and structs in workgroup, private and function memory
/// an explicit layout (ArrayStride, Offset), which recent validators reject for every shader
/// (VUID-StandaloneSpirv-None-10684) and drivers ignore; those decorations are stripped first.
#[test]
fn spirv_val_if_available() {
    let Some(tool) = std::env::var_os("ZHINAO_SPIRV_VAL") else {
        eprintln!("not run: set ZHINAO_SPIRV_VAL to a spirv-val binary");
        return;
    };
    let caps = tiers()[0];
    let dir = std::env::temp_dir().join(format!("zhinao-spirv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for (i, k) in zhinao::ops::all_kernels().iter().enumerate() {
        let src = k.wgsl(&caps).unwrap();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .subgroup_stages(ShaderStages::COMPUTE)
            .subgroup_operations(SubgroupOperationSet::all())
            .validate(&module)
            .unwrap();
        let opts = spv::Options {
            lang_version: (1, 6),
            bounds_check_policies: naga::proc::BoundsCheckPolicies {
                index: naga::proc::BoundsCheckPolicy::Restrict,
                buffer: naga::proc::BoundsCheckPolicy::Restrict,
                image_load: naga::proc::BoundsCheckPolicy::Restrict,
                binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
            },
            force_loop_bounding: true,
            emit_int_div_checks: true,
            ..Default::default()
        };
        let pipe = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: k.entry.to_string() };
        let words = strip_local_array_strides(spv::write_vec(&module, &info, &opts, Some(&pipe)).unwrap());
        let path = dir.join(format!("{i}.spv"));
        std::fs::write(&path, words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let out = std::process::Command::new(&tool).args(["--target-env", "vulkan1.3"]).arg(&path).output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}::{} {:?}: {}",
                k.shader,
                k.entry,
                k.defines,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{} variants fail spirv-val:\n{}", failures.len(), failures.join("\n"));
}

/// Drop the explicit layout (ArrayStride, member Offset) of array and struct types reachable only
/// from Workgroup, Private or Function pointers.
fn strip_local_array_strides(words: Vec<u32>) -> Vec<u32> {
    let (head, body) = words.split_at(5);
    let mut insts = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let n = ((body[i] >> 16) as usize).max(1);
        insts.push(&body[i..i + n]);
        i += n;
    }
    let op = |w: &[u32]| w[0] & 0xffff;
    let (op_decorate, op_member_decorate, op_type_array, op_type_struct, op_type_pointer) = (71, 72, 28, 30, 32);
    // Types reachable from pointers of the given storage classes (through arrays and struct members).
    let reach = |classes: &[u32]| {
        let mut set: Vec<u32> =
            insts.iter().filter(|w| op(w) == op_type_pointer && classes.contains(&w[2])).map(|w| w[3]).collect();
        let mut j = 0;
        while j < set.len() {
            let t = set[j];
            for w in &insts {
                let children: &[u32] = match op(w) {
                    o if o == op_type_array && w[1] == t => &w[2..3],
                    o if o == op_type_struct && w[1] == t => &w[2..],
                    _ => &[],
                };
                for c in children {
                    if !set.contains(c) {
                        set.push(*c);
                    }
                }
            }
            j += 1;
        }
        set
    };
    let external = reach(&[2, 9, 12]); // Uniform, PushConstant, StorageBuffer
    let local: Vec<u32> = reach(&[4, 6, 7]).into_iter().filter(|t| !external.contains(t)).collect();
    let mut out = head.to_vec();
    for w in insts {
        let array_stride = op(w) == op_decorate && w[2] == 6;
        let member_offset = op(w) == op_member_decorate && w[3] == 35;
        if (array_stride || member_offset) && local.contains(&w[1]) {
            continue;
        }
        out.extend_from_slice(w);
    }
    out
}
