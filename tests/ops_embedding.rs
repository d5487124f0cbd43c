//! Embedding gather from f32/f16/bf16 tables (also split over ≥ 3 chunks) against `cpu::embedding`.

mod common;
use common::*;
use zhinao::gpu::{Context, GpuOptions};
use zhinao::ops::embedding::embedding;
use zhinao::tensor::{from_f32, to_f32, DType, Weight};

fn case(ctx: &Context, rows: usize, c: usize, t: usize, dtype: DType, seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let bytes = from_f32(dtype, &rng.normals(rows * c, 1.0));
    let table = to_f32(dtype, &bytes); // the values the GPU sees
    let mut ids: Vec<u32> = (0..t).map(|_| rng.below(rows as u32)).collect();
    ids[0] = rows as u32 - 1; // the last row, the last chunk
    if t > 1 {
        ids[1] = 0;
    }
    let w = Weight::upload(ctx, "emb", dtype, rows, c, &bytes).unwrap();
    let gids = ctx.upload_u32("ids", &ids).unwrap();
    let out = poisoned(ctx, t * c);
    let ds = embedding(ctx, &w, &ids, &gids, &out).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    // A gather is a copy: exact.
    let got = ctx.read_f32(&out, 0, t * c).unwrap();
    assert_eq!(
        got,
        zhinao::cpu::embedding::embedding(&table, c, &ids),
        "rows={rows} C={c} T={t} {dtype} [{}]",
        tier_name(ctx)
    );
    w.chunks.len()
}

#[test]
fn gather_all_dtypes_and_tiers() {
    for ctx in tiers() {
        for (i, &(rows, c, t)) in
            [(1, 1, 1), (10, 7, 3), (100, 64, 17), (33, 257, 5), (5, 4096, 300)].iter().enumerate()
        {
            for d in [DType::F32, DType::F16, DType::BF16] {
                case(&ctx, rows, c, t, d, i as u64);
            }
        }
    }
}

/// A 16 KiB binding limit splits the tables into ≥ 3 chunks; every chunk copies its own rows.
#[test]
fn split_table_across_bindings() {
    let ctx = Context::new(&GpuOptions { max_binding: Some(16384), ..Default::default() }).unwrap();
    for d in [DType::F32, DType::F16, DType::BF16] {
        let chunks = case(&ctx, 800, 33, 40, d, 3);
        assert!(chunks >= 3, "{d}: {chunks} chunks");
    }
}

#[test]
fn bad_ids_are_errors() {
    let ctx = ctx();
    let w = Weight::from_f32(&ctx, "emb", 4, 2, &[1.0; 8]).unwrap();
    let out = ctx.buffer("out", 64).unwrap();
    let ids = [1u32, 4];
    let gids = ctx.upload_u32("ids", &ids).unwrap();
    assert!(embedding(&ctx, &w, &ids, &gids, &out).is_err()); // id 4 of 4 rows
    let ids = [1u32; 9];
    let gids = ctx.upload_u32("ids", &ids).unwrap();
    assert!(embedding(&ctx, &w, &ids, &gids, &out).is_err()); // out too small for [9, 2]
}
