//! argmax over rows and top-k over one row on the device against `cpu::sample` (exact).

mod common;
use common::*;
use zhinao::gpu::Context;
use zhinao::ops::sample::{argmax, TopK};

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

fn topk_case(ctx: &Context, x: &[f32], offset: usize, n: usize, k: usize) {
    let g = ctx.upload_f32("x", x).unwrap();
    let ids = poisoned(ctx, k);
    let vals = poisoned(ctx, k);
    let tk = TopK::new(ctx, n, k).unwrap();
    let ds = tk.record(ctx, &g, offset, &ids, &vals).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got: Vec<(u32, f32)> =
        ctx.read_u32(&ids, 0, k).unwrap().into_iter().zip(ctx.read_f32(&vals, 0, k).unwrap()).collect();
    assert_eq!(
        got,
        zhinao::cpu::sample::top_k(&x[offset..offset + n], k),
        "top_k N={n} k={k} offset={offset} [{}]",
        tier_name(ctx)
    );
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

#[test]
fn top_k_all_tiers() {
    for ctx in tiers() {
        // Plain random logits, the full vocabulary, k up to 64; an offset row of a [3, V] buffer.
        let x = Rng::new(1).normals(3 * V, 2.0);
        for k in [1, 40, 64] {
            topk_case(&ctx, &x, 0, V, k);
        }
        topk_case(&ctx, &x, 2 * V, V, 50);
        topk_case(&ctx, &x, 3, V - 5, 64); // unaligned start, N not a multiple of the slice
                                           // Planted ties: many equal values across slices; fewer distinct values than k.
        let mut t = Rng::new(2).normals(V, 1.0);
        for j in (0..V).step_by(997) {
            t[j] = 7.0;
        }
        for j in (5..V).step_by(4999) {
            t[j] = 6.5;
        }
        topk_case(&ctx, &t, 0, V, 64);
        let q: Vec<f32> = (0..V).map(|j| (j % 5) as f32).collect();
        topk_case(&ctx, &q, 0, V, 64);
        // Small rows: N = k, N = 1, N < one slice, N just over one slice.
        let s = Rng::new(3).normals(3000, 1.0);
        topk_case(&ctx, &s, 0, 1, 1);
        topk_case(&ctx, &s, 0, 10, 10);
        topk_case(&ctx, &s, 7, 100, 64);
        topk_case(&ctx, &s, 0, 2049, 33);
    }
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    assert!(TopK::new(&ctx, 100, 65).is_err());
    assert!(TopK::new(&ctx, 10, 11).is_err());
    assert!(TopK::new(&ctx, 10, 0).is_err());
    let x = ctx.upload_f32("x", &[1.0; 8]).unwrap();
    let o = ctx.buffer("o", 16).unwrap();
    let tk = TopK::new(&ctx, 8, 4).unwrap();
    assert!(tk.record(&ctx, &x, 1, &o, &o).is_err()); // x too small for offset + N
    assert!(argmax(&ctx, &x, 3, 3, &o, &o).is_err());
}
