//! The tensor-core GEMM (`ops::matmul_coop`: dense f16/bf16 and GPTQ int4 weights) against the same
//! CPU twins as the SIMT kernels (`cpu::matmul`, `cpu::matmul_q4::dequantize`), on every coop
//! context of `common::coop_contexts()`: the intrinsics emulated in plain WGSL (runs everywhere,
//! lavapipe included: it checks tiling, staging, the f16 range handling and the epilogue), and the
//! native cooperative matrices where the adapter lists them (else "not run" is printed). Outputs are
//! poisoned with NaN first; shapes are random and awkward (partial tiles in T, N and K, T just above
//! the GEMV limit, split weights).

mod common;
use common::*;
use zhinao::cpu::matmul_q4::{dequantize, g_idx_bytes, pack_gptq};
use zhinao::gpu::{Context, CoopMode, GpuOptions};
use zhinao::ops::matmul::matmul;
use zhinao::ops::matmul_coop::{self, Tile, TILES};
use zhinao::ops::matmul_q4::matmul_q4;
use zhinao::tensor::{f16_scale, from_f32, pow2_scale, to_f32, DType, QWeight, Weight};

/// Exact mode: activations as two f16 halves (about 2^-22 relative), weights exact in f16 after
/// their power-of-two scale, f32 accumulation: as tight as the SIMT kernels' bound.
const EXACT: f64 = 1e-10;
/// Fast mode: each activation rounded once to f16 (2^-11 relative; NMSE ≈ 2^-22/3 ≈ 8e-8), and for
/// int4 the dequantized weight too.
const FAST: f64 = 1e-6;

fn bound(ctx: &Context) -> f64 {
    if ctx.caps.coop == CoopMode::Exact {
        EXACT
    } else {
        FAST
    }
}

/// y = x·Wᵀ (+ bias) (+ y0) by the CPU twin.
#[allow(clippy::too_many_arguments)]
fn reference(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>, y0: Option<&[f32]>) -> Vec<f32> {
    let mut want = zhinao::cpu::matmul::matmul(x, t, k, w, n, bias);
    if let Some(y0) = y0 {
        want.iter_mut().zip(y0).for_each(|(a, b)| *a += b);
    }
    want
}

/// One dense case through `matmul_coop::dense` with a forced tile (`None` when it does not fit the
/// adapter) or, with `tile` None, through `ops::matmul::matmul` (which must route to the coop GEMM).
#[allow(clippy::too_many_arguments)]
fn dense_case(
    ctx: &Context,
    t: usize,
    k: usize,
    n: usize,
    dtype: DType,
    x: &[f32],
    wv: &[f32],
    flags: (bool, bool),
    tile: Option<Tile>,
    seed: u64,
) -> Option<f64> {
    let (bias, acc) = flags;
    let mut rng = Rng::new(seed);
    let wbytes = from_f32(dtype, wv);
    let w = to_f32(dtype, &wbytes);
    let b = rng.normals(n, 1.0);
    let y0 = rng.normals(t * n, 1.0);
    let want = reference(x, t, k, &w, n, bias.then_some(&b[..]), acc.then_some(&y0[..]));
    let gw = Weight::upload(ctx, "w", dtype, n, k, &wbytes).unwrap();
    assert!(gw.f16_scale.is_some(), "{dtype} weight with finite values must be f16-safe");
    let gx = ctx.upload_f32("x", x).unwrap();
    let gb = ctx.upload_f32("b", &b).unwrap();
    let gy = if acc { ctx.upload_f32("y", &y0).unwrap() } else { poisoned(ctx, t * n) };
    let ds = match tile {
        Some(tl) => matmul_coop::dense(ctx, &gx, 0, t, &gw, bias.then_some(&gb), &gy, acc, Some(tl)).unwrap()?,
        None => matmul(ctx, &gx, t, &gw, bias.then_some(&gb), &gy, acc).unwrap(),
    };
    assert!(ds.iter().all(|d| d.shader == "matmul_coop"), "T={t} K={k} N={n} {dtype} did not take the coop GEMM");
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&gy, 0, t * n).unwrap();
    let name = format!(
        "coop T={t} K={k} N={n} {dtype} bias={bias} acc={acc} tile={tile:?} chunks={} [{}]",
        gw.chunks.len(),
        coop_name(ctx)
    );
    check(&name, &got, &want, bound(ctx));
    Some(nmse(&got, &want))
}

#[test]
fn dense_shapes_tiles_and_modes() {
    for ctx in coop_contexts() {
        let mut worst = 0f64;
        let mut ran = 0;
        let shapes = [(5, 8, 1), (17, 40, 33), (65, 24, 130), (130, 200, 70), (7, 520, 16)];
        for (i, &(t, k, n)) in shapes.iter().enumerate() {
            let mut rng = Rng::new(300 + i as u64);
            let x = rng.normals(t * k, 1.0);
            let w = rng.normals(n * k, 0.5);
            for (j, tile) in TILES.iter().enumerate() {
                let dtype = if (i + j) % 2 == 0 { DType::BF16 } else { DType::F16 };
                // Two epilogue variants only (bias + accumulate, neither): each variant is a pipeline
                // to compile, which dominates this test on lavapipe.
                let flags = ((i + j) % 2 == 1, (i + j) % 2 == 1);
                if let Some(e) = dense_case(&ctx, t, k, n, dtype, &x, &w, flags, Some(*tile), 400 + i as u64) {
                    worst = worst.max(e);
                    ran += 1;
                }
            }
        }
        assert!(ran >= shapes.len(), "the 64×64 tile always fits");
        eprintln!("coop dense [{}]: {ran} cases, worst nmse {worst:.2e}", coop_name(&ctx));
    }
}

/// `ops::matmul` routes T > 4 to the coop GEMM on a coop context (and T <= 4 to the GEMV).
#[test]
fn routing_takes_the_coop_gemm() {
    for ctx in coop_contexts() {
        let mut rng = Rng::new(5);
        let (t, k, n) = (9, 48, 40);
        let x = rng.normals(t * k, 1.0);
        let w = rng.normals(n * k, 0.3);
        dense_case(&ctx, t, k, n, DType::BF16, &x, &w, (true, false), None, 6).unwrap();
        let gw = Weight::upload(&ctx, "w", DType::BF16, n, k, &from_f32(DType::BF16, &w)).unwrap();
        let gx = ctx.upload_f32("x", &x).unwrap();
        let gy = poisoned(&ctx, t * n);
        let ds = matmul(&ctx, &gx, 4, &gw, None, &gy, false).unwrap();
        assert!(ds.iter().all(|d| d.shader == "gemv"), "T = 4 stays on the GEMV");
        // f32 weights never take the f16 path.
        let g32 = Weight::from_f32(&ctx, "w", n, k, &w).unwrap();
        assert_eq!(g32.f16_scale, None);
        let ds = matmul(&ctx, &gx, t, &g32, None, &gy, false).unwrap();
        assert!(ds.iter().all(|d| d.shader == "matmul"), "f32 weight stays on the SIMT GEMM");
    }
}

/// Activations beyond f16's range: the workgroups whose A panel holds them run their K loop again
/// scaled by a power of two. Weights beyond it (or tiny ones) get a power-of-two scale at load.
#[test]
fn f16_range_activations_and_weights() {
    for ctx in coop_contexts() {
        let (t, k, n) = (70, 72, 36);
        let mut rng = Rng::new(11);
        let mut x = rng.normals(t * k, 1.0);
        x[3] = 1.0e6; // row 0
        x[5 * k + 70] = -7.0e4; // row 5, the last K tile
        x[66 * k + 1] = 3.3e9; // row 66, the second 64-row tile
        let w = rng.normals(n * k, 0.5);
        dense_case(&ctx, t, k, n, DType::BF16, &x, &w, (false, false), None, 12).unwrap();
        // Large bf16 weights (|w| up to 2^20) and tiny ones (|w| ~ 1e-9): both exact after scaling.
        for scale in [1.0e6f32, 1.0e-9] {
            let wv: Vec<f32> = w.iter().map(|v| v * scale).collect();
            let bytes = from_f32(DType::BF16, &wv);
            let s = f16_scale(DType::BF16, &bytes).unwrap();
            let max = to_f32(DType::BF16, &bytes).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(max * s < 32768.0 && max * s >= 16384.0, "scale {s} for max {max}");
            assert_eq!(s.to_bits() & 0x007f_ffff, 0, "{s} is a power of two");
            let xs = rng.normals(t * k, 1.0);
            dense_case(&ctx, t, k, n, DType::BF16, &xs, &wv, (true, true), None, 13).unwrap();
        }
        // A weight holding inf stays on the SIMT path.
        let mut wv = w.clone();
        wv[7] = f32::INFINITY;
        let gw = Weight::upload(&ctx, "w", DType::BF16, n, k, &from_f32(DType::BF16, &wv)).unwrap();
        assert_eq!(gw.f16_scale, None);
        let gx = ctx.upload_f32("x", &x).unwrap();
        let gy = poisoned(&ctx, t * n);
        let ds = matmul(&ctx, &gx, t, &gw, None, &gy, false).unwrap();
        assert!(ds.iter().all(|d| d.shader == "matmul"));
    }
}

#[test]
fn scale_choice() {
    assert_eq!(pow2_scale(0.0), Some(1.0));
    assert_eq!(pow2_scale(1.0), Some(16384.0));
    assert_eq!(pow2_scale(1.5), Some(16384.0));
    assert_eq!(pow2_scale(65504.0), Some(0.5));
    assert_eq!(pow2_scale(f32::INFINITY), None);
    assert_eq!(pow2_scale(f32::NAN), None);
    assert_eq!(pow2_scale(1e-30), None, "absurdly small weights stay on f32");
    let bf = |v: &[f32]| from_f32(DType::BF16, v);
    assert_eq!(f16_scale(DType::BF16, &bf(&[0.25, -3.0, 1e5])), Some(0.25));
    assert_eq!(f16_scale(DType::BF16, &bf(&[0.25, f32::NEG_INFINITY])), None);
    assert_eq!(f16_scale(DType::F16, &from_f32(DType::F16, &[0.25, -3.0])), Some(1.0));
    assert_eq!(f16_scale(DType::F16, &from_f32(DType::F16, &[1e6])), None, "f16 inf");
    assert_eq!(f16_scale(DType::F32, &from_f32(DType::F32, &[0.25])), None);
}

/// A weight split across bindings: one coop dispatch per chunk, each writing its columns.
#[test]
fn split_weight_chunks() {
    for (emulate, mode) in [(true, CoopMode::Exact), (false, CoopMode::Exact)] {
        let opts =
            GpuOptions { max_binding: Some(16384), coop: Some(mode), coop_emulate: emulate, ..Default::default() };
        let ctx = Context::new(&opts).unwrap();
        if !ctx.caps.coop_f16() {
            eprintln!("not run: split_weight_chunks native: adapter has no cooperative matrices");
            continue;
        }
        let (t, k, n) = (9, 64, 300);
        let mut rng = Rng::new(21);
        let x = rng.normals(t * k, 1.0);
        let w = rng.normals(n * k, 0.5);
        dense_case(&ctx, t, k, n, DType::BF16, &x, &w, (true, false), None, 22).unwrap();
    }
}

#[allow(clippy::too_many_arguments)]
fn q4_case(
    ctx: &Context,
    t: usize,
    k: usize,
    n: usize,
    gs: usize,
    shuffled: bool,
    flags: (bool, bool),
    tile: Option<Tile>,
    seed: u64,
) -> Option<f64> {
    let (bias, acc) = flags;
    let mut rng = Rng::new(seed);
    let g = k / gs;
    let q: Vec<u8> = (0..k * n).map(|_| rng.below(16) as u8).collect();
    let z: Vec<u8> = (0..g * n).map(|_| rng.below(16) as u8).collect();
    // Scales with 11 significant bits: s·(q − z) needs up to 16, so the f16 tile rounds in fast mode.
    let s: Vec<f32> = (0..g * n).map(|_| 0.01 + 0.05 * rng.uniform()).collect();
    let gi = shuffled.then(|| {
        let mut perm: Vec<u32> = (0..k as u32).collect();
        for i in (1..k).rev() {
            perm.swap(i, rng.below(i as u32 + 1) as usize);
        }
        g_idx_bytes(&perm.iter().map(|&p| p / gs as u32).collect::<Vec<_>>())
    });
    let tens = pack_gptq(k, n, &q, &z, &s);
    let x = rng.normals(t * k, 1.0);
    let b = rng.normals(n, 1.0);
    let y0 = rng.normals(t * n, 1.0);
    let w = dequantize(k, n, gs, &tens.qweight, &tens.qzeros, &tens.scales, gi.as_deref());
    let want = reference(&x, t, k, &w, n, bias.then_some(&b[..]), acc.then_some(&y0[..]));
    let qw = QWeight::upload(ctx, "w", k, n, gs, &tens.qweight, &tens.qzeros, &tens.scales, gi.as_deref()).unwrap();
    assert!(qw.f16_scale.is_some());
    let gx = ctx.upload_f32("x", &x).unwrap();
    let gb = ctx.upload_f32("b", &b).unwrap();
    let gy = if acc { ctx.upload_f32("y", &y0).unwrap() } else { poisoned(ctx, t * n) };
    let ds = match tile {
        Some(tl) => matmul_coop::q4(ctx, &gx, t, &qw, bias.then_some(&gb), &gy, acc, Some(tl)).unwrap()?,
        None => matmul_q4(ctx, &gx, t, &qw, bias.then_some(&gb), &gy, acc).unwrap(),
    };
    assert!(ds.iter().all(|d| d.shader == "matmul_coop"), "int4 T={t} K={k} did not take the coop GEMM");
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&gy, 0, t * n).unwrap();
    let name = format!(
        "coop int4 T={t} K={k} N={n} gs={gs} shuffled={shuffled} bias={bias} acc={acc} tile={tile:?} [{}]",
        coop_name(ctx)
    );
    check(&name, &got, &want, bound(ctx));
    Some(nmse(&got, &want))
}

#[test]
fn int4_sequential_and_act_order() {
    for ctx in coop_contexts() {
        let mut worst = 0f64;
        let shapes = [(5, 32, 8, 32), (19, 64, 40, 16), (66, 160, 72, 40), (33, 256, 24, 128)];
        for (i, &(t, k, n, gs)) in shapes.iter().enumerate() {
            for (j, tile) in TILES.iter().enumerate() {
                let flags = ((i + j) % 2 == 0, (i + j) % 2 == 0);
                if let Some(e) = q4_case(&ctx, t, k, n, gs, (i + j) % 2 == 1, flags, Some(*tile), 500 + i as u64) {
                    worst = worst.max(e);
                }
            }
        }
        q4_case(&ctx, 12, 96, 16, 32, true, (true, true), None, 7).unwrap();
        eprintln!("coop int4 [{}]: worst nmse {worst:.2e}", coop_name(&ctx));
    }
}

/// K % 32 != 0 (int4) and K % 8 != 0 (dense) fall back to the SIMT GEMM, still correct.
#[test]
fn unsupported_shapes_fall_back() {
    for ctx in coop_contexts() {
        let mut rng = Rng::new(31);
        let (t, k, n) = (9, 44, 16);
        let x = rng.normals(t * k, 1.0);
        let wv = rng.normals(n * k, 0.5);
        let bytes = from_f32(DType::BF16, &wv);
        let w = to_f32(DType::BF16, &bytes);
        let gw = Weight::upload(&ctx, "w", DType::BF16, n, k, &bytes).unwrap();
        let gx = ctx.upload_f32("x", &x).unwrap();
        let gy = poisoned(&ctx, t * n);
        let ds = matmul(&ctx, &gx, t, &gw, None, &gy, false).unwrap();
        assert!(ds.iter().all(|d| d.shader == "matmul"));
        ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        check("K=44 fallback", &ctx.read_f32(&gy, 0, t * n).unwrap(), &reference(&x, t, k, &w, n, None, None), 1e-10);
        let (tens, k) = (pack_gptq(40, 8, &vec![3; 320], &[1; 8], &[0.02; 8]), 40);
        let qw = QWeight::upload(&ctx, "w", k, 8, 40, &tens.qweight, &tens.qzeros, &tens.scales, None).unwrap();
        let x = rng.normals(t * k, 1.0);
        let gx = ctx.upload_f32("x", &x).unwrap();
        let gy = poisoned(&ctx, t * 8);
        let ds = matmul_q4(&ctx, &gx, t, &qw, None, &gy, false).unwrap();
        assert!(ds.iter().all(|d| d.shader == "matmul_q4"));
    }
}
