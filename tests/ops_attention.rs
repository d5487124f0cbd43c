//! Attention (KV write, causal and padded prefill) against `cpu::attention` (decode: ops_decode.rs).
//! K/V are rounded through f16 before the CPU reference, so only accumulation error remains. Cache
//! rows the kernels must not read hold f16 NaN; so do the parts of a strided q row that are not q.

mod common;
use common::*;
use half::f16;
use zhinao::cpu::attention::{attention, Shape};
use zhinao::gpu::Context;
use zhinao::ops::attention::{decode, kv_write, kv_write_params, prefill, AttnShape};

/// f32 accumulation and f32 exp against an f64 reference on exactly f16-representable K/V.
const BOUND: f64 = 1e-8;

struct Case {
    b: usize,
    s: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    causal: bool,
    lens: Option<Vec<u32>>,
    /// q inside fused qkv rows [T, (H + 2·Hkv)·D] (the K and V parts NaN) instead of q [T, H·D].
    fused: bool,
}

/// Run one prefill case on `ctx`; returns the NMSE (asserted against BOUND).
fn prefill_case(ctx: &Context, c: &Case, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let kv_stride = c.pos0 + c.s + 3;
    let valid: Vec<usize> = (0..c.b).map(|bb| c.pos0 + c.lens.as_ref().map_or(c.s, |l| l[bb] as usize)).collect();
    let q = rng.normals(c.b * c.s * c.h * c.d, 1.0);
    let k = kv_values(&mut rng, c.b, kv_stride, c.hkv, c.d, &valid);
    let v = kv_values(&mut rng, c.b, kv_stride, c.hkv, c.d, &valid);
    let sh = Shape { b: c.b, s: c.s, s_kv: kv_stride, h: c.h, hkv: c.hkv, d: c.d, pos0: c.pos0, causal: c.causal };
    let want = attention(&q, &k, &v, &sh, c.lens.as_deref());

    let q_stride = if c.fused { (c.h + 2 * c.hkv) * c.d } else { c.h * c.d };
    let mut rows = vec![f32::NAN; c.b * c.s * q_stride];
    for (t, qr) in q.chunks_exact(c.h * c.d).enumerate() {
        rows[t * q_stride..][..c.h * c.d].copy_from_slice(qr);
    }
    let gq = ctx.upload_f32("q", &rows).unwrap();
    let (gk, gv) = (upload_cache(ctx, &k), upload_cache(ctx, &v));
    let glens = c.lens.as_ref().map(|l| ctx.upload_u32("lens", l).unwrap());
    let out = poisoned(ctx, want.len());
    let shape = AttnShape { b: c.b, s: c.s, h: c.h, hkv: c.hkv, d: c.d, kv_stride, q_stride, causal: c.causal };
    let disp = prefill(ctx, &gq, &gk, &gv, &pos_buffer(ctx, c.pos0), &out, &shape, glens.as_ref()).unwrap();
    ctx.run(&[&disp]).unwrap();
    let got = ctx.read_f32(&out, 0, want.len()).unwrap();
    let name = format!(
        "prefill B={} S={} H={} Hkv={} D={} pos0={} causal={} lens={:?} fused={} [{}]",
        c.b,
        c.s,
        c.h,
        c.hkv,
        c.d,
        c.pos0,
        c.causal,
        c.lens,
        c.fused,
        tier_name(ctx)
    );
    check(&name, &got, &want, BOUND);
    // Padding rows must be exactly zero.
    if let Some(l) = &c.lens {
        for bb in 0..c.b {
            let row = c.h * c.d;
            let pad = &got[(bb * c.s + l[bb] as usize) * row..(bb + 1) * c.s * row];
            assert!(pad.iter().all(|x| *x == 0.0), "{name}: padded rows of sequence {bb} not zero");
        }
    }
    nmse(&got, &want)
}

#[test]
fn prefill_causal() {
    for ctx in tiers() {
        let mut worst = 0f64;
        for (i, &(s, h, hkv, d, pos0, fused)) in [
            (1, 2, 2, 64, 0, false),
            (7, 4, 2, 64, 0, true),
            (37, 2, 1, 128, 0, false),
            (5, 2, 2, 64, 11, true),
            (70, 4, 4, 64, 0, false),
            (19, 4, 1, 128, 40, true),
            (1, 4, 1, 128, 300, true),
        ]
        .iter()
        .enumerate()
        {
            let c = Case { b: 1, s, h, hkv, d, pos0, causal: true, lens: None, fused };
            worst = worst.max(prefill_case(&ctx, &c, 10 + i as u64));
        }
        println!("attn_prefill causal [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
    }
}

#[test]
fn prefill_padded_and_other_head_dims() {
    for ctx in tiers() {
        let mut worst = 0f64;
        let cases = [
            // Batched BERT: bidirectional with a padding mask.
            Case { b: 3, s: 9, h: 4, hkv: 2, d: 64, pos0: 0, causal: false, lens: Some(vec![9, 4, 1]), fused: false },
            Case { b: 2, s: 33, h: 2, hkv: 2, d: 128, pos0: 0, causal: false, lens: Some(vec![17, 33]), fused: true },
            // Bidirectional without padding; right-padded causal batch (reranker).
            Case { b: 2, s: 6, h: 2, hkv: 1, d: 64, pos0: 0, causal: false, lens: None, fused: false },
            Case { b: 2, s: 21, h: 4, hkv: 2, d: 64, pos0: 0, causal: true, lens: Some(vec![21, 8]), fused: true },
            // Head dims other than 64/128.
            Case { b: 1, s: 11, h: 2, hkv: 1, d: 80, pos0: 3, causal: true, lens: None, fused: true },
            Case { b: 1, s: 10, h: 2, hkv: 2, d: 256, pos0: 0, causal: true, lens: None, fused: false },
            Case { b: 2, s: 5, h: 2, hkv: 2, d: 2, pos0: 0, causal: false, lens: Some(vec![5, 3]), fused: false },
        ];
        for (i, c) in cases.iter().enumerate() {
            worst = worst.max(prefill_case(&ctx, c, 30 + i as u64));
        }
        println!("attn_prefill padded/bidirectional/D=80,256,2 [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
    }
}

/// kv_write stores f16(k), f16(v) at rows pos0 .. pos0+T and leaves the other rows alone; a replay
/// with a new pos0 appends; the written cache feeds prefill.
#[test]
fn kv_write_round_trip() {
    let ctx = ctx();
    let (t, hkv, d, pos0, ctx_len) = (5, 3, 64, 7, 16);
    let row = hkv * d;
    let mut rng = Rng::new(5);
    let k = rng.normals(t * row, 1.0);
    let v = rng.normals(t * row, 2.0);
    let (gk, gv) = (ctx.upload_f32("k", &k).unwrap(), ctx.upload_f32("v", &v).unwrap());
    let ck = ctx.buffer("ck", (ctx_len * row * 2) as u64).unwrap();
    let cv = ctx.buffer("cv", (ctx_len * row * 2) as u64).unwrap();
    ctx.fill_u32(&ck, 0xdead_beef);
    ctx.fill_u32(&cv, 0xdead_beef);
    let disp = kv_write(&ctx, &gk, &gv, t, hkv, d, pos0, &ck, &cv, ctx_len).unwrap();
    ctx.run(&[&disp]).unwrap();
    // Replay at pos0 = 0 (row ranges 0..5 and 7..12).
    ctx.set_params(&disp, &kv_write_params(t, hkv, d, 0, ctx_len).unwrap());
    ctx.run(&[&disp]).unwrap();
    for (cache, src) in [(&ck, &k), (&cv, &v)] {
        let words = ctx.read_u32(cache, 0, ctx_len * row / 2).unwrap();
        let halves: Vec<u16> = bytemuck::cast_slice(&words).to_vec();
        for r in 0..ctx_len {
            for e in 0..row {
                let got = halves[r * row + e];
                let want = if (pos0..pos0 + t).contains(&r) {
                    f16::from_f32(src[(r - pos0) * row + e]).to_bits()
                } else if r < t {
                    f16::from_f32(src[r * row + e]).to_bits()
                } else {
                    if e % 2 == 0 {
                        0xbeef
                    } else {
                        0xdead
                    }
                };
                // pack2x16float may round either way: allow one f16 ulp.
                assert!((got as i32 - want as i32).abs() <= 1, "row {r} elem {e}: {got:#06x} vs {want:#06x}");
            }
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let b = ctx.buffer("b", 1 << 16).unwrap();
    // kv_write: pos0 + T > ctx.
    assert!(kv_write(&ctx, &b, &b, 4, 2, 64, 13, &b, &b, 16).is_err());
    assert!(kv_write(&ctx, &b, &b, 4, 2, 63, 0, &b, &b, 16).is_err(), "odd D");
    // Cache smaller than ctx rows.
    let small = ctx.buffer("small", 64).unwrap();
    assert!(kv_write(&ctx, &b, &b, 1, 2, 64, 0, &small, &small, 16).is_err());
    // prefill: H not a multiple of Hkv; S > kv_stride; D too large; q_stride < H·D; output too small.
    let shape = AttnShape { b: 1, s: 4, h: 3, hkv: 2, d: 64, kv_stride: 8, q_stride: 192, causal: true };
    assert!(prefill(&ctx, &b, &b, &b, &b, &b, &shape, None).is_err());
    assert!(prefill(&ctx, &b, &b, &b, &b, &b, &AttnShape { h: 2, s: 9, ..shape }, None).is_err());
    assert!(prefill(&ctx, &b, &b, &b, &b, &b, &AttnShape { h: 2, d: 258, ..shape }, None).is_err());
    assert!(prefill(&ctx, &b, &b, &b, &b, &b, &AttnShape { h: 2, q_stride: 127, ..shape }, None).is_err());
    assert!(prefill(&ctx, &b, &b, &b, &b, &small, &AttnShape { h: 2, q_stride: 128, ..shape }, None).is_err());
    assert!(prefill(&ctx, &b, &b, &b, &b, &b, &AttnShape { h: 2, q_stride: 128, ..shape }, None).is_ok());
    // decode: H not a multiple of Hkv; max_ctx 0; scratch too small.
    let tiny = ctx.buffer("tiny", 4).unwrap();
    assert!(decode(&ctx, &b, &b, &b, &b, &b, &b, 6, 4, 64, 16).is_err());
    assert!(decode(&ctx, &b, &b, &b, &b, &b, &b, 4, 2, 64, 0).is_err());
    assert!(decode(&ctx, &b, &b, &b, &b, &tiny, &b, 4, 2, 64, 16).is_err());
    assert!(decode(&ctx, &b, &b, &b, &b, &b, &b, 4, 2, 64, 16).is_ok());
}

/// The f32-K/V prefill (`KV_F32`, used by BERT): K and V in full f32, not rounded to f16, read from
/// `[B * kv_stride, Hkv, D]` f32; masked rows are NaN so any read past the mask shows.
#[test]
fn prefill_kv_f32_matches_cpu() {
    const BOUND_F32: f64 = 1e-10;
    for ctx in tiers() {
        let mut worst = 0f64;
        let cases = [
            Case { b: 3, s: 9, h: 4, hkv: 4, d: 64, pos0: 0, causal: false, lens: Some(vec![9, 4, 1]), fused: false },
            Case { b: 2, s: 40, h: 2, hkv: 2, d: 16, pos0: 0, causal: false, lens: Some(vec![40, 23]), fused: false },
            Case { b: 2, s: 17, h: 2, hkv: 1, d: 128, pos0: 0, causal: false, lens: Some(vec![5, 17]), fused: false },
            Case { b: 1, s: 10, h: 2, hkv: 2, d: 256, pos0: 2, causal: true, lens: None, fused: false },
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut rng = Rng::new(70 + i as u64);
            let kv_stride = c.pos0 + c.s + 3;
            let valid: Vec<usize> =
                (0..c.b).map(|bb| c.pos0 + c.lens.as_ref().map_or(c.s, |l| l[bb] as usize)).collect();
            let q = rng.normals(c.b * c.s * c.h * c.d, 1.0);
            let mut kv = || {
                let mut v = rng.normals(c.b * kv_stride * c.hkv * c.d, 1.0);
                for (bb, &n) in valid.iter().enumerate() {
                    v[(bb * kv_stride + n) * c.hkv * c.d..(bb + 1) * kv_stride * c.hkv * c.d].fill(f32::NAN);
                }
                v
            };
            let (k, v) = (kv(), kv());
            let sh =
                Shape { b: c.b, s: c.s, s_kv: kv_stride, h: c.h, hkv: c.hkv, d: c.d, pos0: c.pos0, causal: c.causal };
            let want = attention(&q, &k, &v, &sh, c.lens.as_deref());
            let pos = pos_buffer(&ctx, c.pos0);
            let (gq, gk, gv) =
                (ctx.upload_f32("q", &q).unwrap(), ctx.upload_f32("k", &k).unwrap(), ctx.upload_f32("v", &v).unwrap());
            let glens = c.lens.as_ref().map(|l| ctx.upload_u32("lens", l).unwrap());
            let out = poisoned(&ctx, want.len());
            let shape = AttnShape {
                b: c.b,
                s: c.s,
                h: c.h,
                hkv: c.hkv,
                d: c.d,
                kv_stride,
                q_stride: c.h * c.d,
                causal: c.causal,
            };
            let disp = zhinao::ops::attention::prefill_kv_f32(&ctx, &gq, &gk, &gv, &pos, &out, &shape, glens.as_ref())
                .unwrap();
            ctx.run(&[&disp]).unwrap();
            let got = ctx.read_f32(&out, 0, want.len()).unwrap();
            let name = format!(
                "prefill_kv_f32 B={} S={} H={} Hkv={} D={} lens={:?} [{}]",
                c.b,
                c.s,
                c.h,
                c.hkv,
                c.d,
                c.lens,
                tier_name(&ctx)
            );
            check(&name, &got, &want, BOUND_F32);
            worst = worst.max(nmse(&got, &want));
        }
        println!("attn_prefill f32 K/V [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
    }
}
