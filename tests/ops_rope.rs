//! NeoX RoPE in place on fused QKV rows against `cpu::rope`, including large positions.

mod common;
use common::*;
use zhinao::gpu::Context;
use zhinao::ops::rope::{inv_freq, rope_qkv};

/// The shader's own sin/cos (range reduction + minimax) are within ≈1.1e-7 absolute of f64 for
/// every angle below 411774; rotating f32 values adds f32 rounding. Measured ≤ 2.2e-15 (max abs
/// error 4.8e-7) for positions up to 360000 with theta 5e7 and 1e4; bound with margin.
const BOUND: f64 = 1e-12;

#[allow(clippy::too_many_arguments)]
fn case(ctx: &Context, t: usize, h: usize, hkv: usize, d: usize, pos0: usize, theta: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    let stride = (h + 2 * hkv) * d;
    let x = rng.normals(t * stride, 1.0);
    let freq = inv_freq(theta, d);
    let gx = ctx.upload_f32("qkv", &x).unwrap();
    let gf = ctx.upload_f32("inv_freq", &freq).unwrap();
    let disp = rope_qkv(ctx, &gx, t, h, hkv, d, pos0, &gf).unwrap();
    ctx.run(&[&disp]).unwrap();
    let mut want = x.clone();
    zhinao::cpu::rope::rope_qkv(&mut want, t, h, hkv, d, pos0, &freq);
    let got = ctx.read_f32(&gx, 0, t * stride).unwrap();
    let name = format!("T={t} H={h} Hkv={hkv} D={d} pos0={pos0} theta={theta} [{}]", tier_name(ctx));
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("{name}: nmse {:.2e} max abs {:.2e}", nmse(&got, &want), max_abs(&got, &want));
    }
    check(&name, &got, &want, BOUND);
    // V is untouched, bit for bit.
    for ti in 0..t {
        let v = ti * stride + (h + hkv) * d..(ti + 1) * stride;
        assert_eq!(got[v.clone()], x[v], "{name}: V changed");
    }
}

#[test]
fn rope_small_positions_all_tiers() {
    for ctx in tiers() {
        case(&ctx, 1, 1, 1, 2, 0, 1e4, 1);
        case(&ctx, 7, 4, 2, 16, 3, 1e4, 2);
        case(&ctx, 5, 3, 3, 128, 0, 1e4, 3);
        case(&ctx, 2, 2, 1, 6, 11, 5e7, 4);
    }
}

#[test]
fn rope_large_positions() {
    let ctx = ctx();
    for theta in [5e7, 1e4] {
        case(&ctx, 4, 2, 2, 128, 100_000 - 4, theta, 5);
        case(&ctx, 3, 1, 1, 128, 359_997, theta, 6);
        case(&ctx, 64, 1, 1, 128, 65_500, theta, 7);
    }
}

#[test]
fn rope_many_pairs_fold_the_grid() {
    // 131072 tokens × 128 heads × 1 pair = 2^24 threads = 65536 workgroups (> 65535: folded);
    // the buffer is exactly 128 MiB, the binding limit. Hkv = 0: no K or V heads.
    let ctx = ctx();
    case(&ctx, 131072, 128, 0, 2, 7, 5e7, 8);
    case(&ctx, 1100, 32, 32, 128, 7, 5e7, 9);
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let x = ctx.upload_f32("x", &[1.0; 48]).unwrap();
    let f = ctx.upload_f32("f", &[1.0; 4]).unwrap();
    assert!(rope_qkv(&ctx, &x, 1, 2, 1, 7, 0, &f).is_err()); // odd D
    assert!(rope_qkv(&ctx, &x, 2, 2, 2, 8, 0, &f).is_err()); // qkv too small
    assert!(rope_qkv(&ctx, &x, 1, 2, 1, 8, 500_000, &f).is_err()); // position out of range
}
