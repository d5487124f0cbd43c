//! RMSNorm and LayerNorm (with and without the fused residual add) against `cpu::norm`.

mod common;
use common::*;
use zhinao::gpu::Context;
use zhinao::ops::norm::{layer_norm, rms_norm};

/// f32 row reductions (C ≤ 4096) against an f64 reference: measured ≤ 1.6e-14 on lavapipe.
const BOUND: f64 = 1e-12;

fn case(ctx: &Context, layer: bool, residual: bool, t: usize, c: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut x = rng.normals(t * c, 2.0);
    let r = rng.normals(t * c, 1.0);
    let w = rng.normals(c, 1.0);
    let b = rng.normals(c, 0.5);
    let eps = 1e-5;
    let gx = ctx.upload_f32("x", &x).unwrap();
    let gr = ctx.upload_f32("r", &r).unwrap();
    let gw = ctx.upload_f32("w", &w).unwrap();
    let gb = ctx.upload_f32("b", &b).unwrap();
    let gy = poisoned(ctx, t * c);
    let res = residual.then_some(&gr);
    let d = if layer {
        layer_norm(ctx, &gx, res, t, c, &gw, &gb, eps, &gy).unwrap()
    } else {
        rms_norm(ctx, &gx, res, t, c, &gw, eps, &gy).unwrap()
    };
    ctx.run(&[&d]).unwrap();
    let want = if layer {
        zhinao::cpu::norm::layer_norm(&mut x, residual.then_some(&r[..]), t, c, &w, &b, eps)
    } else {
        zhinao::cpu::norm::rms_norm(&mut x, residual.then_some(&r[..]), t, c, &w, eps)
    };
    let name = format!(
        "{} residual={residual} T={t} C={c} [{}]",
        if layer { "layer_norm" } else { "rms_norm" },
        tier_name(ctx)
    );
    let got = ctx.read_f32(&gy, 0, t * c).unwrap();
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("{name}: nmse {:.2e}", nmse(&got, &want));
    }
    check(&name, &got, &want, BOUND);
    if residual {
        // The updated residual stream is exactly x + r in f32.
        assert_eq!(ctx.read_f32(&gx, 0, t * c).unwrap(), x, "{name}: updated h");
    }
}

#[test]
fn norms_all_tiers() {
    for ctx in tiers() {
        for (i, &(t, c)) in [(1, 1), (1, 7), (3, 255), (5, 257), (2, 4096), (33, 100), (1, 1023)].iter().enumerate() {
            for layer in [false, true] {
                for residual in [false, true] {
                    case(&ctx, layer, residual, t, c, 10 * i as u64 + residual as u64);
                }
            }
        }
    }
}

#[test]
fn many_rows_fold_the_grid() {
    // 70000 rows > 65535 workgroups per dimension.
    let ctx = ctx();
    case(&ctx, false, true, 70000, 3, 5);
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let x = ctx.upload_f32("x", &[1.0; 8]).unwrap();
    let w = ctx.upload_f32("w", &[1.0; 8]).unwrap();
    let y = ctx.buffer("y", 16).unwrap();
    assert!(rms_norm(&ctx, &x, None, 1, 8, &w, 1e-5, &y).is_err()); // y too small
    assert!(rms_norm(&ctx, &x, None, 2, 8, &w, 1e-5, &y).is_err()); // x too small
    assert!(rms_norm(&ctx, &x, None, 1, 8, &w, 1e-5, &x).is_err()); // aliasing
    assert!(rms_norm(&ctx, &x, None, 0, 8, &w, 1e-5, &y).is_err());
    assert!(layer_norm(&ctx, &x, Some(&x), 1, 4, &w, &w, 1e-5, &y).is_err());
}
