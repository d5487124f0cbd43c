//! Shared by the GPU test binaries: one context per capability tier, error metrics, poisoning.
//!
//! GPU tests always need an adapter. Under `CI=true` the adapter must also be on the backend CI asked
//! for (`ZHINAO_CI_BACKEND`: Vulkan by default, i.e. lavapipe; Metal and Dx12 in the macOS and Windows
//! jobs of .github/workflows/ci.yml), with f16 and subgroups: a silent fall-back to GL, which lacks
//! both, fails the run. `ZHINAO_CI_ADAPTER` names the implementation a CI step pins instead
//! (`swiftshader`: its name must match, and it has subgroups but no f16), and
//! `ZHINAO_CI_SUBGROUP_SIZE` the subgroup size, so each step checks it runs on the driver it claims.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use zhinao::gpu::{Context, CoopMode, GpuBuffer, GpuOptions};

#[allow(unused_imports)]
pub use zhinao::rng::Rng;

/// NaN bit pattern written into outputs before a run, so unwritten elements fail the check.
pub const POISON: u32 = 0x7fc0_0000;

fn make(no_f16: bool, no_subgroups: bool) -> Arc<Context> {
    let opts = GpuOptions { no_f16, no_subgroups, ..Default::default() };
    let ctx = Context::new(&opts).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        let want = std::env::var("ZHINAO_CI_BACKEND").unwrap_or_else(|_| "Vulkan".to_string());
        assert!(ctx.info.backend.eq_ignore_ascii_case(&want), "CI must run on {want}, got {}", ctx.describe());
        let adapter = std::env::var("ZHINAO_CI_ADAPTER").unwrap_or_default().to_ascii_lowercase();
        match adapter.as_str() {
            "" => assert!(
                ctx.info.caps.shader_f16 && ctx.info.caps.subgroups,
                "CI adapter lacks f16/subgroups: {}",
                ctx.describe()
            ),
            "swiftshader" => assert!(
                ctx.info.name.to_ascii_lowercase().contains("swiftshader") && ctx.info.caps.subgroups,
                "CI must run on SwiftShader (subgroups, no f16), got {}",
                ctx.describe()
            ),
            other => {
                assert!(
                    ctx.info.name.to_ascii_lowercase().contains(other),
                    "CI must run on {other}, got {}",
                    ctx.describe()
                )
            }
        }
        // `ZHINAO_CI_SUBGROUP_SIZE`: the width a step pins (lavapipe's LP_NATIVE_VECTOR_WIDTH / 32).
        if let Ok(w) = std::env::var("ZHINAO_CI_SUBGROUP_SIZE") {
            let c = ctx.info.caps;
            assert!(
                w.parse() == Ok(c.subgroup_min) && c.subgroup_min == c.subgroup_max,
                "CI must run at subgroup size {w}, got {}",
                ctx.describe()
            );
        }
    }
    ctx
}

/// A context limited to WebGPU's default compute limits (256 invocations per workgroup, 256-byte
/// storage offset alignment: SwiftShader's), binding at most `max_binding` bytes when given.
/// Checks that the device really granted those limits, so a test on it cannot pass vacuously.
pub fn webgpu_ctx(max_binding: Option<u64>) -> Arc<Context> {
    let opts = GpuOptions { webgpu_limits: true, max_binding, ..Default::default() };
    let ctx = Context::new(&opts).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    let l = ctx.limits;
    assert!(
        l.invocations_per_workgroup <= 256 && l.storage_offset_alignment >= 256,
        "WebGPU limits not applied: {l:?}"
    );
    ctx
}

/// The default context: every tier the adapter has.
pub fn ctx() -> Arc<Context> {
    static C: OnceLock<Arc<Context>> = OnceLock::new();
    C.get_or_init(|| {
        let c = make(false, false);
        eprintln!("adapter: {}", c.describe());
        c
    })
    .clone()
}

/// One context per capability tier that changes a kernel: subgroups on and forced off.
/// (No kernel uses shader-f16, so forcing it off changes nothing; see ARCHITECTURE.md.)
pub fn tiers() -> Vec<Arc<Context>> {
    static T: OnceLock<Vec<Arc<Context>>> = OnceLock::new();
    T.get_or_init(|| {
        let full = ctx();
        let mut v = vec![full.clone()];
        if full.caps.subgroups {
            v.push(make(true, true));
        }
        v
    })
    .clone()
}

pub fn tier_name(c: &Context) -> String {
    format!("f16={} subgroups={}", c.caps.shader_f16, c.caps.subgroups)
}

/// Normalised mean squared error ‖a − b‖² / ‖b‖²; NaN or a length mismatch is +∞.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().max(1e-30);
    num / den
}

pub fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Assert `nmse(got, want) <= bound`, naming the case.
pub fn check(case: &str, got: &[f32], want: &[f32], bound: f64) {
    let e = nmse(got, want);
    if std::env::var_os("ZHINAO_PRINT_NMSE").is_some() {
        eprintln!("nmse {e:.3e} (bound {bound:.0e}) {case}");
    }
    assert!(e <= bound, "{case}: nmse {e:.3e} > {bound:.1e} (max abs {:.3e})", max_abs(got, want));
}

/// An output buffer of `n` f32 filled with NaN.
pub fn poisoned(ctx: &Context, n: usize) -> GpuBuffer {
    let b = ctx.buffer("out", (n * 4) as u64).unwrap();
    ctx.fill_u32(&b, POISON);
    b
}

/// f16 NaN: cache rows a kernel must never read hold it.
pub const F16_NAN: u16 = 0x7e00;

/// Random normal values already rounded to f16 (so a reference on them sees no rounding).
pub fn f16_normals(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.normals(n, 1.0).into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect()
}

/// f16 bits of f32 values (NaN stays NaN).
pub fn f16_bits(vals: &[f32]) -> Vec<u16> {
    vals.iter().map(|x| if x.is_nan() { F16_NAN } else { half::f16::from_f32(*x).to_bits() }).collect()
}

/// A cache-layout buffer `[rows, Hkv, D/2]` u32 from f32 values `[rows, Hkv, D]` (NaN stays NaN).
pub fn upload_cache(ctx: &Context, vals: &[f32]) -> GpuBuffer {
    ctx.upload("cache", bytemuck::cast_slice(&f16_bits(vals))).unwrap()
}

/// K or V `[B, kv_stride, Hkv, D]` of f16 values with rows at or past `valid[b]` set to NaN.
pub fn kv_values(rng: &mut Rng, b: usize, kv_stride: usize, hkv: usize, d: usize, valid: &[usize]) -> Vec<f32> {
    let mut v = f16_normals(rng, b * kv_stride * hkv * d);
    for (bb, &n) in valid.iter().enumerate() {
        v[(bb * kv_stride + n) * hkv * d..(bb + 1) * kv_stride * hkv * d].fill(f32::NAN);
    }
    v
}

/// A one-element u32 buffer holding `pos0` (the `pos` binding of attention and rope_kv_write).
pub fn pos_buffer(ctx: &Context, pos0: usize) -> GpuBuffer {
    ctx.upload_u32("pos", &[pos0 as u32]).unwrap()
}

/// Contexts that run the cooperative-matrix kernels: emulated in plain WGSL in both modes (any
/// adapter with shader-f16, lavapipe included), then native in both modes when the adapter lists the
/// 16×16×16 f16×f16→f32 configuration; otherwise it prints "not run: adapter has no cooperative
/// matrices" once and the native contexts are simply absent.
pub fn coop_contexts() -> Vec<Arc<Context>> {
    static C: OnceLock<Vec<Arc<Context>>> = OnceLock::new();
    C.get_or_init(|| {
        let mut v = Vec::new();
        for emulate in [true, false] {
            for mode in [CoopMode::Exact, CoopMode::Fast] {
                let opts = GpuOptions { coop: Some(mode), coop_emulate: emulate, ..Default::default() };
                let c = Context::new(&opts).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
                if c.caps.coop == mode && c.caps.coop_emulated == emulate {
                    v.push(c);
                } else if mode == CoopMode::Exact {
                    eprintln!(
                        "not run: {} coop kernels: {} ({})",
                        if emulate { "emulated" } else { "native" },
                        if emulate {
                            "adapter has no shader-f16 or ZHINAO_NO_COOP is set"
                        } else {
                            "adapter has no cooperative matrices"
                        },
                        c.describe()
                    );
                }
            }
        }
        v
    })
    .clone()
}

pub fn coop_name(c: &Context) -> String {
    format!("coop={:?}{}", c.caps.coop, if c.caps.coop_emulated { " emulated" } else { " native" })
}

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "zhinao-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Load 4000 random mutations of the weight file `good` (a third truncated, the rest with 1–4 bytes
/// replaced) as `name` and read every tensor that opens: each must give `Ok` or `Err`, never a panic.
pub fn weight_file_mutations_never_panic(name: &str, good: &[u8]) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..4000 {
        let mut bytes = good.to_vec();
        if round % 3 == 0 {
            bytes.truncate(rand() as usize % good.len());
        } else {
            for _ in 0..1 + rand() % 4 {
                let at = rand() as usize % bytes.len();
                bytes[at] = rand() as u8;
            }
        }
        if let Ok(wf) = zhinao::loader::WeightFiles::from_bytes(name, bytes) {
            for name in wf.names().map(str::to_string).collect::<Vec<_>>() {
                if let Ok(t) = wf.get(&name) {
                    let _ = t.to_f32_vec();
                }
            }
        }
    }
}

/// Little-endian bytes of tensors, for checkpoints written by tests.
pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn bf16s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()
}
pub fn f16s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
}
pub fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
