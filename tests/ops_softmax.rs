//! Row softmax and log-softmax in place against `cpu::softmax`.

mod common;
use common::*;
use zhinao::gpu::{Context, GpuOptions};
use zhinao::ops::softmax::softmax;

/// f32 exp and sums vs f64: measured ≤ 2.4e-14 for N ≤ 1000, 1.6e-12 for N = 158464 (the f32
/// row sum of 158464 terms limits it) on lavapipe.
const BOUND: f64 = 1e-11;
/// log-softmax values are x − max − log Σ: absolute error ≈ f32 rounding of O(10) values.
/// Measured ≤ 3.2e-15.
const BOUND_LOG: f64 = 1e-12;

fn case(ctx: &Context, r: usize, n: usize, log: bool, seed: u64) {
    let x = Rng::new(seed).normals(r * n, 4.0);
    let g = ctx.upload_f32("x", &x).unwrap();
    let ds = softmax(ctx, &g, r, n, log).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&g, 0, r * n).unwrap();
    let want = zhinao::cpu::softmax::softmax(&x, r, n, log);
    let name =
        format!("{} R={r} N={n} chunks={} [{}]", if log { "log_softmax" } else { "softmax" }, ds.len(), tier_name(ctx));
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("{name}: nmse {:.2e}", nmse(&got, &want));
    }
    check(&name, &got, &want, if log { BOUND_LOG } else { BOUND });
}

#[test]
fn softmax_all_tiers() {
    for ctx in tiers() {
        for (i, &(r, n)) in [(1, 1), (1, 7), (3, 255), (5, 257), (2, 158464), (70, 33)].iter().enumerate() {
            case(&ctx, r, n, false, i as u64);
            case(&ctx, r, n, true, 20 + i as u64);
        }
    }
}

/// Rows that do not fit one binding are dispatched in aligned row groups.
#[test]
fn rows_split_across_bindings() {
    let ctx = Context::new(&GpuOptions { max_binding: Some(4096), ..Default::default() }).unwrap();
    // At 256-byte alignment (SwiftShader's, WebGPU's default) a row group of 400-byte rows starts
    // at an aligned offset only every 16 rows (6400 bytes, more than one binding): the chunks
    // start below their first row and the kernel skips the difference.
    for ctx in [ctx, webgpu_ctx(Some(4096))] {
        case(&ctx, 40, 100, false, 1); // 400-byte rows: 10 rows per binding
        case(&ctx, 9, 950, true, 2); // 3800-byte rows: one row per dispatch
    }
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let x = ctx.upload_f32("x", &[1.0; 8]).unwrap();
    assert!(softmax(&ctx, &x, 3, 3, false).is_err());
    assert!(softmax(&ctx, &x, 0, 3, true).is_err());
}
