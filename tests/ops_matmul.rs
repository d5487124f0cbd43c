//! Dense matmul (GEMV and GEMM, f32/f16/bf16 weights, bias, accumulate) against `cpu::matmul`.

mod common;
use common::*;
use zhinao::gpu::{Context, GpuOptions};
use zhinao::ops::matmul::{gemm_simt, matmul};
use zhinao::tensor::{from_f32, to_f32, DType, Weight};

/// f32 accumulation against an f64 reference on exactly representable weights.
const BOUND: f64 = 1e-10;

#[allow(clippy::too_many_arguments)]
fn case(ctx: &Context, t: usize, k: usize, n: usize, dtype: DType, bias: bool, acc: bool, seed: u64) {
    case_on(ctx, t, k, n, dtype, bias, acc, seed, None)
}

/// One case through `matmul` (`simt` None) or the SIMT GEMM with the given tile height (`Some(bm128)`).
#[allow(clippy::too_many_arguments)]
fn case_on(
    ctx: &Context,
    t: usize,
    k: usize,
    n: usize,
    dtype: DType,
    bias: bool,
    acc: bool,
    seed: u64,
    simt: Option<bool>,
) {
    let mut rng = Rng::new(seed);
    let x = rng.normals(t * k, 1.0);
    let wbytes = from_f32(dtype, &rng.normals(n * k, 0.5));
    let w = to_f32(dtype, &wbytes); // the values the GPU sees
    let b = rng.normals(n, 1.0);
    let y0 = rng.normals(t * n, 1.0);
    let mut want = zhinao::cpu::matmul::matmul(&x, t, k, &w, n, bias.then_some(&b[..]));
    if acc {
        want.iter_mut().zip(&y0).for_each(|(a, b)| *a += b);
    }
    let gw = Weight::upload(ctx, "w", dtype, n, k, &wbytes).unwrap();
    let gx = ctx.upload_f32("x", &x).unwrap();
    let gb = ctx.upload_f32("b", &b).unwrap();
    let gy = if acc { ctx.upload_f32("y", &y0).unwrap() } else { poisoned(ctx, t * n) };
    let ds = match simt {
        None => matmul(ctx, &gx, t, &gw, bias.then_some(&gb), &gy, acc).unwrap(),
        Some(bm128) => gemm_simt(ctx, &gx, 0, t, &gw, bias.then_some(&gb), &gy, acc, bm128).unwrap(),
    };
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&gy, 0, t * n).unwrap();
    check(
        &format!(
            "T={t} K={k} N={n} {dtype} bias={bias} acc={acc} simt={simt:?} chunks={} [{}]",
            gw.chunks.len(),
            tier_name(ctx)
        ),
        &got,
        &want,
        BOUND,
    );
}

#[test]
fn gemv_all_dtypes_and_tiers() {
    for ctx in tiers() {
        for (i, &(t, k, n)) in
            [(1, 64, 48), (1, 67, 33), (1, 1, 5), (2, 256, 130), (4, 40, 9), (1, 1024, 300)].iter().enumerate()
        {
            for d in [DType::F32, DType::F16, DType::BF16] {
                case(&ctx, t, k, n, d, i % 2 == 0, i % 3 == 1, 100 + i as u64);
            }
        }
    }
}

#[test]
fn gemm_all_dtypes_and_tiers() {
    for ctx in tiers() {
        for (i, &(t, k, n)) in [(5, 64, 64), (17, 96, 70), (64, 64, 128), (130, 33, 77), (7, 1, 3)].iter().enumerate() {
            for d in [DType::F32, DType::F16, DType::BF16] {
                case(&ctx, t, k, n, d, i % 2 == 1, i % 3 == 0, 200 + i as u64);
            }
        }
    }
}

/// The SIMT GEMM at its tile edges (T around 64 and 128, N around 128, K around the 16-step and odd),
/// with both tile heights, vector (K % 8 == 0) and scalar loads, every dtype.
#[test]
fn gemm_simt_tile_edges() {
    let shapes = [
        (1, 16, 128),
        (63, 17, 129),
        (64, 8, 127),
        (65, 32, 1),
        (127, 24, 130),
        (128, 16, 256),
        (129, 41, 131),
        (200, 100, 257),
    ];
    for ctx in tiers() {
        for (i, &(t, k, n)) in shapes.iter().enumerate() {
            for (j, bm128) in [false, true].into_iter().enumerate() {
                // Every dtype meets both tile heights across the shapes; two epilogue variants.
                let d = [DType::F32, DType::F16, DType::BF16][(i + j) % 3];
                case_on(&ctx, t, k, n, d, i % 2 == 0, i % 2 == 0, 600 + i as u64, Some(bm128));
            }
        }
    }
}

/// A weight larger than one binding is split by rows; force a 16 KiB binding limit.
#[test]
fn split_weight_across_bindings() {
    let ctx = Context::new(&GpuOptions { max_binding: Some(16384), ..Default::default() }).unwrap();
    assert_eq!(ctx.limits.max_binding, 16384);
    for (t, k, n) in [(1, 64, 300), (9, 64, 300), (1, 100, 77)] {
        case(&ctx, t, k, n, DType::BF16, true, false, 7);
    }
    for bm128 in [false, true] {
        case_on(&ctx, 9, 64, 300, DType::F16, false, true, 8, Some(bm128));
    }
    let w = Weight::upload(&ctx, "w", DType::BF16, 300, 64, &vec![0u8; 300 * 64 * 2]).unwrap();
    assert_eq!(w.chunks.len(), 3, "300 rows of 128 B in 16 KiB bindings");
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let w = Weight::upload(&ctx, "w", DType::F32, 4, 8, &[0u8; 4 * 8 * 4]).unwrap();
    let x = ctx.upload_f32("x", &[1.0; 8]).unwrap();
    let y = ctx.buffer("y", 8).unwrap(); // too small for [1, 4]
    assert!(matmul(&ctx, &x, 1, &w, None, &y, false).is_err());
    assert!(Weight::upload(&ctx, "w", DType::F32, 4, 8, &[0u8; 12]).is_err());
}
