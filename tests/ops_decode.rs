//! Decode attention (flash-decoding: pass 1 per (head group, split), pass 2 merging the splits)
//! against the f64 `cpu::attention` twin, and the replay contract of a recorded decode step
//! (`rope_kv_write` + both decode passes): one dispatch list, recorded once, replayed at other
//! positions after rewriting only pos[0]. K/V are exactly f16-representable, so only accumulation
//! error remains. Cache rows at or past kv_len hold f16 NaN: a kernel that reads one fails the check.

mod common;
use common::*;
use zhinao::cpu::attention::{attention, Shape};
use zhinao::gpu::{Context, GpuBuffer};
use zhinao::ops::attention::{
    decode, decode_config, decode_rows, decode_scratch_len, decode_splits, DecodeIo, DecodeRows,
};
use zhinao::ops::rope::{inv_freq, rope_kv_write, rope_kv_write_slots};

/// f32 dot products, f32 exp and the f32 split merge against f64 on exactly f16-representable K/V.
/// Measured worst 2.2e-13 (32K keys) on lavapipe, both tiers. Tight on purpose: dropping or doubling
/// one key of 32K moves the output by ~1e-9 in NMSE.
const BOUND: f64 = 1e-11;

/// Decode inputs: q [H, D] and a cache of `max_ctx` rows whose rows >= `valid` are NaN.
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    gq: GpuBuffer,
    gk: GpuBuffer,
    gv: GpuBuffer,
}

fn data(ctx: &Context, h: usize, hkv: usize, d: usize, valid: usize, max_ctx: usize, seed: u64) -> Data {
    let mut rng = Rng::new(seed);
    let q = rng.normals(h * d, 1.0);
    let k = kv_values(&mut rng, 1, max_ctx, hkv, d, &[valid]);
    let v = kv_values(&mut rng, 1, max_ctx, hkv, d, &[valid]);
    let (gq, gk, gv) = (ctx.upload_f32("q", &q).unwrap(), upload_cache(ctx, &k), upload_cache(ctx, &v));
    Data { q, k, v, gq, gk, gv }
}

#[allow(clippy::too_many_arguments)]
fn want(q: &[f32], k: &[f32], v: &[f32], h: usize, hkv: usize, d: usize, kv_len: usize, max_ctx: usize) -> Vec<f32> {
    let sh = Shape { b: 1, s: 1, s_kv: max_ctx, h, hkv, d, pos0: kv_len - 1, causal: true };
    attention(q, k, v, &sh, None)
}

fn case_name(ctx: &Context, h: usize, hkv: usize, d: usize, kv_len: usize, max_ctx: usize) -> String {
    format!(
        "decode H={h} Hkv={hkv} D={d} kv_len={kv_len} max_ctx={max_ctx} splits={} {:?} [{}]",
        decode_splits(h, hkv, d, max_ctx),
        decode_config(h, hkv, d),
        tier_name(ctx)
    )
}

/// One decode (recorded for `max_ctx`, pos[0] = kv_len - 1) on poisoned scratch and output.
fn decode_case(ctx: &Context, h: usize, hkv: usize, d: usize, kv_len: usize, max_ctx: usize, seed: u64) -> f64 {
    let x = data(ctx, h, hkv, d, kv_len, max_ctx, seed);
    let scratch = poisoned(ctx, decode_scratch_len(h, hkv, d, max_ctx));
    let out = poisoned(ctx, h * d);
    let pos = pos_buffer(ctx, kv_len - 1);
    let ds = decode(ctx, &x.gq, &x.gk, &x.gv, &pos, &scratch, &out, h, hkv, d, max_ctx).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&out, 0, h * d).unwrap();
    let w = want(&x.q, &x.k, &x.v, h, hkv, d, kv_len, max_ctx);
    check(&case_name(ctx, h, hkv, d, kv_len, max_ctx), &got, &w, BOUND);
    nmse(&got, &w)
}

/// kv_len 1, small, around the split size (64) and the workgroup step, several splits; each as a
/// one-off call (max_ctx = kv_len) and sized for a longer cache (splits past kv_len unused). GQA
/// ratios 1, 4 (one workgroup per kv head), 6 (two query heads per workgroup) and 8; D = 64 and 128,
/// plus the other load widths: D = 80 (rows not a whole number of lane loads), 6 (one word per load),
/// 256 and 2.
#[test]
fn decode_matches_cpu() {
    for ctx in tiers() {
        let mut worst = 0f64;
        let mut seed = 100;
        for &(h, hkv, d) in &[(4, 4, 64), (8, 2, 128), (4, 1, 64), (2, 2, 128)] {
            for kv_len in [1usize, 17, 64, 65, 300, 1030] {
                for max_ctx in [kv_len, kv_len + 700] {
                    seed += 1;
                    worst = worst.max(decode_case(&ctx, h, hkv, d, kv_len, max_ctx, seed));
                }
            }
        }
        for &(h, hkv, d) in &[(6, 1, 64), (8, 1, 64), (2, 2, 80), (2, 1, 6), (2, 2, 256), (2, 2, 2)] {
            for (kv_len, max_ctx) in [(1, 1), (33, 100), (700, 701)] {
                seed += 1;
                worst = worst.max(decode_case(&ctx, h, hkv, d, kv_len, max_ctx, seed));
            }
        }
        println!("attn_decode [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
    }
}

/// Long contexts: 16K + 17 keys (GQA 4 at D = 128, MHA at D = 64) and a full 32K cache.
#[test]
fn decode_long_context() {
    for ctx in tiers() {
        let mut worst = 0f64;
        for (i, &(h, hkv, d, kv_len, max_ctx)) in
            [(8, 2, 128, 16401, 16500), (2, 2, 64, 16401, 16401), (2, 1, 64, 32768, 32768)].iter().enumerate()
        {
            worst = worst.max(decode_case(&ctx, h, hkv, d, kv_len, max_ctx, 200 + i as u64));
        }
        println!("attn_decode long context [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
    }
}

/// A decode recorded once for the longest context, replayed at other lengths by writing pos[0] only.
#[test]
fn decode_replay_writes_only_pos() {
    for ctx in tiers() {
        let (h, hkv, d, max_ctx) = (4, 2, 64, 9000);
        let x = data(&ctx, h, hkv, d, max_ctx, max_ctx, 77);
        let scratch = poisoned(&ctx, decode_scratch_len(h, hkv, d, max_ctx));
        let out = ctx.buffer("o", (h * d * 4) as u64).unwrap();
        let pos = pos_buffer(&ctx, 0);
        let ds = decode(&ctx, &x.gq, &x.gk, &x.gv, &pos, &scratch, &out, h, hkv, d, max_ctx).unwrap();
        for kv_len in [300, 1030, 1, 33, 9000, 64] {
            ctx.write(&pos, 0, &(kv_len as u32 - 1).to_le_bytes());
            ctx.fill_u32(&out, POISON);
            ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
            let got = ctx.read_f32(&out, 0, h * d).unwrap();
            // Rows >= kv_len are valid data here (not NaN), so reading past kv_len would show as error.
            let w = want(&x.q, &x.k, &x.v, h, hkv, d, kv_len, max_ctx);
            check(&format!("replay {}", case_name(&ctx, h, hkv, d, kv_len, max_ctx)), &got, &w, BOUND);
        }
    }
}

/// The replay contract of a decode step: [rope_kv_write, attn_decode, attn_decode_reduce] recorded
/// once over a fused qkv row, then for each position only the new token's qkv (the GEMV output) and
/// pos[0] are written. Checks the cache rows written (vs the CPU twin's f16 rounding, within one f16
/// ulp), that no other row changed, and the attention output vs the CPU on the cache the GPU holds.
#[test]
fn decode_step_replays_with_only_pos_rewritten() {
    for ctx in tiers() {
        for &(h, hkv, d) in &[(8, 2, 128), (4, 4, 64)] {
            let max_ctx = 5000;
            let positions = [0usize, 1, 2, 63, 64, 1000, 4998];
            let last = *positions.iter().max().unwrap();
            let mut rng = Rng::new(300 + h as u64);
            // Cache rows 0 ..= last hold earlier tokens (random f16), rows past it NaN.
            let mut ck = f16_bits(&kv_values(&mut rng, 1, max_ctx, hkv, d, &[last + 1]));
            let mut cv = f16_bits(&kv_values(&mut rng, 1, max_ctx, hkv, d, &[last + 1]));
            let gk = ctx.upload("k cache", bytemuck::cast_slice(&ck)).unwrap();
            let gv = ctx.upload("v cache", bytemuck::cast_slice(&cv)).unwrap();
            let stride = (h + 2 * hkv) * d;
            let qkv = ctx.buffer("qkv", (stride * 4) as u64).unwrap();
            let freq = inv_freq(1e4, d);
            let gf = ctx.upload_f32("inv_freq", &freq).unwrap();
            let pos = pos_buffer(&ctx, 0);
            let scratch = poisoned(&ctx, decode_scratch_len(h, hkv, d, max_ctx));
            let out = ctx.buffer("o", (h * d * 4) as u64).unwrap();
            let mut step = vec![rope_kv_write(&ctx, &qkv, 1, h, hkv, d, 0, &gf, &pos, &gk, &gv, max_ctx).unwrap()];
            step.extend(decode(&ctx, &qkv, &gk, &gv, &pos, &scratch, &out, h, hkv, d, max_ctx).unwrap());
            let step: Vec<_> = step.iter().collect();
            for &p in &positions {
                let x = rng.normals(stride, 1.0);
                ctx.write(&qkv, 0, bytemuck::cast_slice(&x));
                ctx.write(&pos, 0, &(p as u32).to_le_bytes());
                ctx.fill_u32(&out, POISON);
                ctx.run(&step).unwrap();
                let got = ctx.read_f32(&out, 0, h * d).unwrap();
                let name = format!("step at pos {p}: {}", case_name(&ctx, h, hkv, d, p + 1, max_ctx));
                // The CPU twin of rope_kv_write on the same row and cache.
                let mut xr = x.clone();
                zhinao::cpu::rope::rope_kv_write(&mut xr, 1, h, hkv, d, p, &freq, &mut ck, &mut cv);
                let gpu_k: Vec<u16> =
                    bytemuck::cast_slice(&ctx.read_u32(&gk, 0, max_ctx * hkv * d / 2).unwrap()).to_vec();
                let gpu_v: Vec<u16> =
                    bytemuck::cast_slice(&ctx.read_u32(&gv, 0, max_ctx * hkv * d / 2).unwrap()).to_vec();
                for (what, g, c) in [("K", &gpu_k, &mut ck), ("V", &gpu_v, &mut cv)] {
                    for (i, (a, b)) in g.iter().zip(c.iter()).enumerate() {
                        let in_row = i / (hkv * d) == p;
                        let ok = if in_row { (*a as i32 - *b as i32).abs() <= 1 } else { a == b };
                        assert!(ok, "{name}: {what} cache element {i} (row {}): {a:#06x} vs {b:#06x}", i / (hkv * d));
                    }
                    // Keep the CPU cache identical to the GPU's (a 1-ulp rounding difference stays local).
                    c.copy_from_slice(g);
                }
                let f = |bits: &[u16]| bits.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect::<Vec<_>>();
                let w = want(&xr[..h * d], &f(&ck), &f(&cv), h, hkv, d, p + 1, max_ctx);
                check(&name, &got, &w, BOUND);
            }
        }
    }
}

/// A batched decode step (`rope_kv_write_slots` + `decode_rows`): B sequences, each at its own
/// position in its own slot of a pooled cache (slot rows past each sequence's length NaN), fused
/// qkv rows B apart. Each row must match the CPU twin of a lone step on its own slot (the written
/// cache row within one f16 ulp, every other row of every slot unchanged, attention within BOUND),
/// so neighbours cannot leak into a sequence. Replayed at new positions by rewriting pos only.
#[test]
fn batched_decode_step_matches_each_sequence_alone() {
    for ctx in tiers() {
        for &(h, hkv, d, b) in &[(8, 2, 128, 3), (4, 4, 64, 5), (2, 1, 64, 1)] {
            let max_ctx = 300;
            let mut rng = Rng::new(900 + b as u64);
            let mut lens: Vec<usize> = (0..b).map(|i| [0, 7, 64, 150, 298][i % 5]).collect();
            let slot = max_ctx * hkv * d;
            let mut ck = f16_bits(&kv_values(&mut rng, b, max_ctx, hkv, d, &lens));
            let mut cv = f16_bits(&kv_values(&mut rng, b, max_ctx, hkv, d, &lens));
            let gk = ctx.upload("k slots", bytemuck::cast_slice(&ck)).unwrap();
            let gv = ctx.upload("v slots", bytemuck::cast_slice(&cv)).unwrap();
            let stride = (h + 2 * hkv) * d;
            let qkv = ctx.buffer("qkv", (b * stride * 4) as u64).unwrap();
            let freq = inv_freq(1e4, d);
            let gf = ctx.upload_f32("inv_freq", &freq).unwrap();
            let pos = ctx.buffer("pos", (b * 4) as u64).unwrap();
            let scratch = poisoned(&ctx, b * decode_scratch_len(h, hkv, d, max_ctx));
            let out = ctx.buffer("o", (b * h * d * 4) as u64).unwrap();
            let mut step = vec![rope_kv_write_slots(&ctx, &qkv, b, h, hkv, d, &gf, &pos, &gk, &gv, max_ctx).unwrap()];
            let io = DecodeIo { q: &qkv, cache_k: &gk, cache_v: &gv, pos: &pos, scratch: &scratch, out: &out };
            step.extend(decode_rows(&ctx, &io, DecodeRows { b, q_stride: stride }, h, hkv, d, max_ctx).unwrap());
            let step: Vec<_> = step.iter().collect();
            for round in 0..2 {
                let x = rng.normals(b * stride, 1.0);
                ctx.write(&qkv, 0, bytemuck::cast_slice(&x));
                let p32: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
                ctx.write(&pos, 0, bytemuck::cast_slice(&p32));
                ctx.fill_u32(&out, POISON);
                ctx.run(&step).unwrap();
                let got = ctx.read_f32(&out, 0, b * h * d).unwrap();
                let gpu_k: Vec<u16> = bytemuck::cast_slice(&ctx.read_u32(&gk, 0, b * slot / 2).unwrap()).to_vec();
                let gpu_v: Vec<u16> = bytemuck::cast_slice(&ctx.read_u32(&gv, 0, b * slot / 2).unwrap()).to_vec();
                for i in 0..b {
                    let p = lens[i];
                    let name =
                        format!("round {round} seq {i}/{b} at pos {p}: {}", case_name(&ctx, h, hkv, d, p + 1, max_ctx));
                    let mut xr = x[i * stride..(i + 1) * stride].to_vec();
                    let (ks, vs) = (&mut ck[i * slot..(i + 1) * slot], &mut cv[i * slot..(i + 1) * slot]);
                    zhinao::cpu::rope::rope_kv_write(&mut xr, 1, h, hkv, d, p, &freq, ks, vs);
                    for (what, g, c) in [
                        ("K", &gpu_k[i * slot..(i + 1) * slot], &mut *ks),
                        ("V", &gpu_v[i * slot..(i + 1) * slot], &mut *vs),
                    ] {
                        for (e, (a, w)) in g.iter().zip(c.iter()).enumerate() {
                            let in_row = e / (hkv * d) == p;
                            let ok = if in_row { (*a as i32 - *w as i32).abs() <= 1 } else { a == w };
                            assert!(ok, "{name}: {what} element {e} (row {}): {a:#06x} vs {w:#06x}", e / (hkv * d));
                        }
                        c.copy_from_slice(g);
                    }
                    let f = |bits: &[u16]| bits.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect::<Vec<_>>();
                    let w = want(&xr[..h * d], &f(ks), &f(vs), h, hkv, d, p + 1, max_ctx);
                    check(&name, &got[i * h * d..(i + 1) * h * d], &w, BOUND);
                }
                // Next round: every sequence one position on (the last slot is full: it stays put
                // and its row is rewritten in place).
                lens.iter_mut().for_each(|l| *l = (*l + 1).min(max_ctx - 1));
            }
        }
    }
}
