//! argmax over rows on the device against `cpu::sample` (exact).

mod common;
use common::*;
use zhinao::gpu::Context;
use zhinao::ops::sample::argmax;

const V: usize = 158464;

fn argmax_case(ctx: &Context, x: &[f32], r: usize, n: usize) {
    let g = ctx.upload_f32("x", x).unwrap();
    let ids = poisoned(ctx, r);
    let vals = poisoned(ctx, r);
    let ds = argmax(ctx, &g, r, n, &ids, &vals).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got: Vec<(u32, f32)> =
        ctx.read_u32(&ids, 0, r).unwrap().into_iter().zip(ctx.read_f32(&vals, 0, r).unwrap()).collect();
    assert_eq!(got, zhinao::cpu::sample::argmax(x, r, n), "argmax R={r} N={n} [{}]", tier_name(ctx));
}

/// Random rows with planted ties: the maximum repeated at several indices, and a row of equals.
fn rows_with_ties(r: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = rng.normals(r * n, 3.0);
    for row in 0..r {
        let m = 20.0 + row as f32;
        for _ in 0..3 {
            let j = rng.below(n as u32) as usize;
            x[row * n + j] = m;
        }
    }
    if r > 2 {
        x[2 * n..3 * n].fill(-1.5);
    }
    x
}

#[test]
fn argmax_all_tiers() {
    for ctx in tiers() {
        for (i, &(r, n)) in [(1, 1), (1, 7), (3, 255), (5, 257), (4, 1000), (2, V)].iter().enumerate() {
            argmax_case(&ctx, &rows_with_ties(r, n, i as u64), r, n);
            argmax_case(&ctx, &Rng::new(9 + i as u64).normals(r * n, 1.0), r, n);
        }
    }
}

/// Rows that do not fit one binding, at the adapter's alignment and at 256 bytes (SwiftShader's):
/// chunks bound from the aligned offset below their first row.
#[test]
fn argmax_rows_split_across_bindings() {
    let ctx =
        zhinao::gpu::Context::new(&zhinao::gpu::GpuOptions { max_binding: Some(4096), ..Default::default() }).unwrap();
    for ctx in [ctx, webgpu_ctx(Some(4096))] {
        for (i, &(r, n)) in [(40, 100), (9, 950), (13, 3)].iter().enumerate() {
            argmax_case(&ctx, &rows_with_ties(r, n, 40 + i as u64), r, n);
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let x = ctx.upload_f32("x", &[1.0; 8]).unwrap();
    let o = ctx.buffer("o", 16).unwrap();
    assert!(argmax(&ctx, &x, 3, 3, &o, &o).is_err());
}
