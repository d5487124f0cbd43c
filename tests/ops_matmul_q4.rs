//! GPTQ int4 dequant-matmul (GEMV and GEMM; sequential groups and desc_act g_idx; bias,
//! accumulate, split weights) against `cpu::matmul_q4::dequantize` + `cpu::matmul`.

mod common;
use common::*;
use zhinao::cpu::matmul_q4::{dequantize, g_idx_bytes, pack_gptq};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::ops::matmul_q4::{gemm_simt, matmul_q4};
use zhinao::tensor::QWeight;

/// f32 accumulation against an f64 reference on the exact dequantized weights
/// (f16 scale × small integer is exact in f32).
const BOUND: f64 = 1e-10;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Groups {
    /// No g_idx tensor (desc_act = false as usually loaded).
    Implicit,
    /// g_idx[k] = k / gs given explicitly: must be detected and dropped.
    Sequential,
    /// desc_act: groups of gs inputs in shuffled order (g_idx[k] = perm[k] / gs).
    Shuffled,
}

/// Random AutoGPTQ tensors: q and z_stored uniform in 0..15, positive f16 scales.
fn gptq(
    rng: &mut Rng,
    k: usize,
    n: usize,
    gs: usize,
    groups: Groups,
) -> (zhinao::cpu::matmul_q4::Gptq, Option<Vec<u8>>) {
    let g = k / gs;
    let q: Vec<u8> = (0..k * n).map(|_| rng.below(16) as u8).collect();
    let z: Vec<u8> = (0..g * n).map(|_| rng.below(16) as u8).collect();
    let s: Vec<f32> = (0..g * n).map(|_| 0.01 + 0.05 * rng.uniform()).collect();
    let gi = match groups {
        Groups::Implicit => None,
        Groups::Sequential => Some((0..k).map(|i| (i / gs) as u32).collect::<Vec<_>>()),
        Groups::Shuffled => {
            let mut perm: Vec<u32> = (0..k as u32).collect();
            for i in (1..k).rev() {
                perm.swap(i, rng.below(i as u32 + 1) as usize);
            }
            Some(perm.iter().map(|&p| p / gs as u32).collect())
        }
    };
    (pack_gptq(k, n, &q, &z, &s), gi.map(|v| g_idx_bytes(&v)))
}

/// Run one case; returns its NMSE.
#[allow(clippy::too_many_arguments)]
fn case(
    ctx: &Context,
    t: usize,
    k: usize,
    n: usize,
    gs: usize,
    groups: Groups,
    bias: bool,
    acc: bool,
    seed: u64,
) -> f64 {
    case_on(ctx, t, k, n, gs, groups, bias, acc, seed, None)
}

/// One case through `matmul_q4` (`simt` None) or the SIMT GEMM with the given tile height.
#[allow(clippy::too_many_arguments)]
fn case_on(
    ctx: &Context,
    t: usize,
    k: usize,
    n: usize,
    gs: usize,
    groups: Groups,
    bias: bool,
    acc: bool,
    seed: u64,
    simt: Option<bool>,
) -> f64 {
    let mut rng = Rng::new(seed);
    let (tens, gi) = gptq(&mut rng, k, n, gs, groups);
    let x = rng.normals(t * k, 1.0);
    let b = rng.normals(n, 1.0);
    let y0 = rng.normals(t * n, 1.0);
    let w = dequantize(k, n, gs, &tens.qweight, &tens.qzeros, &tens.scales, gi.as_deref());
    let mut want = zhinao::cpu::matmul::matmul(&x, t, k, &w, n, bias.then_some(&b[..]));
    if acc {
        want.iter_mut().zip(&y0).for_each(|(a, b)| *a += b);
    }
    let qw = QWeight::upload(ctx, "w", k, n, gs, &tens.qweight, &tens.qzeros, &tens.scales, gi.as_deref()).unwrap();
    let expect_table = groups == Groups::Shuffled || !gs.is_multiple_of(8);
    assert!(qw.chunks.iter().all(|c| c.g_idx.is_some() == expect_table), "g_idx kept for {groups:?} gs={gs}");
    let gx = ctx.upload_f32("x", &x).unwrap();
    let gb = ctx.upload_f32("b", &b).unwrap();
    let gy = if acc { ctx.upload_f32("y", &y0).unwrap() } else { poisoned(ctx, t * n) };
    let ds = match simt {
        None => matmul_q4(ctx, &gx, t, &qw, bias.then_some(&gb), &gy, acc).unwrap(),
        Some(bm128) => gemm_simt(ctx, &gx, t, &qw, bias.then_some(&gb), &gy, acc, bm128).unwrap(),
    };
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&gy, 0, t * n).unwrap();
    let name = format!(
        "T={t} K={k} N={n} gs={gs} {groups:?} bias={bias} acc={acc} simt={simt:?} chunks={} [{}]",
        qw.chunks.len(),
        tier_name(ctx)
    );
    check(&name, &got, &want, BOUND);
    nmse(&got, &want)
}

/// With ZHINAO_REPORT set, print the worst NMSE of a test per tier (for reports).
fn report(what: &str, ctx: &Context, worst: f64) {
    if std::env::var_os("ZHINAO_REPORT").is_some() {
        eprintln!("{what} [{}]: worst nmse {worst:.3e}", tier_name(ctx));
    }
}

fn run_all(what: &str, shapes: &[(usize, usize, usize, usize)], seed: u64) {
    for ctx in tiers() {
        let mut worst = 0f64;
        for (i, &(t, k, n, gs)) in shapes.iter().enumerate() {
            let s = seed + 10 * i as u64;
            worst = worst.max(case(&ctx, t, k, n, gs, Groups::Implicit, i % 2 == 0, i % 3 == 1, s));
            worst = worst.max(case(&ctx, t, k, n, gs, Groups::Shuffled, i % 2 == 1, i % 3 != 1, s + 1));
        }
        report(what, &ctx, worst);
    }
}

#[test]
fn gemv_sequential_and_desc_act() {
    // (T, K, N, gs): K % 32 == 0 takes the VEC4 path; K = 72 the scalar one; gs = 12 is not a
    // multiple of 8 and falls back to a g_idx table.
    let shapes =
        [(1, 64, 48, 32), (1, 256, 8, 128), (3, 128, 72, 64), (1, 1024, 200, 128), (2, 72, 16, 24), (4, 48, 24, 12)];
    run_all("gemv", &shapes, 100);
}

#[test]
fn gemm_sequential_and_desc_act() {
    let shapes = [(17, 128, 40, 32), (70, 256, 136, 128), (5, 72, 24, 24), (9, 48, 16, 12), (65, 40, 8, 8)];
    run_all("gemm", &shapes, 200);
}

/// An explicit g_idx that is sequential is detected (no table kept) and gives the same result.
#[test]
fn sequential_g_idx_is_detected() {
    let ctx = ctx();
    for (t, k, n, gs) in [(1, 128, 16, 32), (6, 64, 24, 64)] {
        case(&ctx, t, k, n, gs, Groups::Sequential, true, false, 300);
    }
}

/// A weight larger than one binding is split by output rows; force a 4 KiB binding limit.
#[test]
fn split_weight_across_bindings() {
    let ctx = Context::new(&GpuOptions { max_binding: Some(4096), ..Default::default() }).unwrap();
    let mut worst = 0f64;
    for (t, k, n, gs) in [(1, 256, 136, 128), (5, 192, 136, 64), (2, 512, 40, 32)] {
        for groups in [Groups::Implicit, Groups::Shuffled] {
            worst = worst.max(case(&ctx, t, k, n, gs, groups, true, t == 2, 400));
        }
    }
    report("split", &ctx, worst);
    let mut rng = Rng::new(1);
    let (tens, _) = gptq(&mut rng, 256, 136, 128, Groups::Implicit);
    let w = QWeight::upload(&ctx, "w", 256, 136, 128, &tens.qweight, &tens.qzeros, &tens.scales, None).unwrap();
    assert_eq!(w.chunks.len(), 5, "136 rows of 128 B in 4 KiB bindings");
    assert_eq!(w.bytes(), 136 * 128 + 136 * 2 * 4);
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let mut rng = Rng::new(2);
    let (k, n, gs) = (64, 16, 32);
    let (g, _) = gptq(&mut rng, k, n, gs, Groups::Implicit);
    let up = |k, n, gs, qw: &[u8], qz: &[u8], sc: &[u8], gi: Option<&[u8]>| {
        QWeight::upload(&ctx, "w", k, n, gs, qw, qz, sc, gi)
    };
    assert!(up(k, n, gs, &g.qweight, &g.qzeros, &g.scales, None).is_ok());
    let err = |r: zhinao::Result<QWeight>, needle: &str| {
        let e = r.expect_err("must fail").to_string();
        assert!(e.contains(needle), "error '{e}' should name '{needle}'");
    };
    err(up(60, n, 20, &g.qweight, &g.qzeros, &g.scales, None), "multiple of 8"); // K % 8 != 0
    err(up(k, 12, gs, &g.qweight, &g.qzeros, &g.scales, None), "multiple of 8"); // N % 8 != 0
    err(up(k, n, 24, &g.qweight, &g.qzeros, &g.scales, None), "group size"); // 24 does not divide 64
    err(up(k, n, gs, &g.qweight[4..], &g.qzeros, &g.scales, None), "qweight");
    err(up(k, n, gs, &g.qweight, &g.qzeros[4..], &g.scales, None), "qzeros");
    err(up(k, n, gs, &g.qweight, &g.qzeros, &g.scales[2..], None), "scales");
    err(up(k, n, gs, &g.qweight, &g.qzeros, &g.scales, Some(&[0u8; 8])), "g_idx");
    err(up(k, n, gs, &g.qweight, &g.qzeros, &g.scales, Some(&g_idx_bytes(&[2; 64]))), "g_idx[0]");
    // Buffers too small for [T, K] / [T, N].
    let w = up(k, n, gs, &g.qweight, &g.qzeros, &g.scales, None).unwrap();
    let x = ctx.upload_f32("x", &[1.0; 64]).unwrap();
    let y = ctx.buffer("y", 8).unwrap();
    assert!(matmul_q4(&ctx, &x, 1, &w, None, &y, false).is_err());
    let y = ctx.buffer("y", 16 * 4).unwrap();
    assert!(matmul_q4(&ctx, &x, 2, &w, None, &y, false).is_err());
    assert!(matmul_q4(&ctx, &x, 1, &w, None, &y, false).is_ok());
}

/// The SIMT GEMM at its tile edges (T around 64 and 128, N around 128, K not a multiple of 16), both
/// tile heights, sequential and act-order groups.
#[test]
fn gemm_simt_tile_edges() {
    let shapes =
        [(1, 8, 128, 8), (63, 24, 136, 8), (65, 40, 8, 40), (127, 16, 256, 8), (129, 48, 64, 16), (200, 64, 264, 32)];
    for ctx in tiers() {
        for (i, &(t, k, n, gs)) in shapes.iter().enumerate() {
            for bm128 in [false, true] {
                let groups = if i % 2 == 0 { Groups::Implicit } else { Groups::Shuffled };
                case_on(&ctx, t, k, n, gs, groups, i % 2 == 1, i % 2 == 1, 700 + i as u64, Some(bm128));
            }
        }
    }
}
