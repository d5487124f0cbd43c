//! Tensor-core prefill attention (`ops::attention_coop`) against `cpu::attention`, on every coop
//! context of `common::coop_contexts()` (emulated everywhere; native where the adapter lists
//! cooperative matrices, else "not run" is printed). As in ops_attention.rs, K/V are rounded through
//! f16 before the CPU reference and cache rows the kernel must not read hold f16 NaN; outputs are
//! poisoned. Cases: causal with and without pos0, padding masks (bidirectional and causal), GQA,
//! several query and KV tiles, head dims 64/80/128/256, keys whose scores keep growing (the lazy O
//! rescale), a query row beyond f16's range, the position-buffer entry with a fused qkv buffer, and
//! a replay at a new pos0 by rewriting only the position buffer.

mod common;
use common::*;
use half::f16;
use zhinao::cpu::attention::{attention, Shape};
use zhinao::gpu::{Context, CoopMode, GpuBuffer};
use zhinao::ops::attention::{prefill, AttnShape};
use zhinao::ops::attention_coop::prefill_pos;

/// Exact mode: q and p as two f16 halves, f16 K/V exact, f32 softmax: the SIMT kernel's bound.
const EXACT: f64 = 1e-8;
/// Fast mode: q·scale and p rounded once to f16 (2^-11 relative).
const FAST: f64 = 1e-5;

const F16_NAN: u16 = 0x7e00;

fn bound(ctx: &Context) -> f64 {
    if ctx.caps.coop == CoopMode::Exact {
        EXACT
    } else {
        FAST
    }
}

fn upload_cache(ctx: &Context, vals: &[f32]) -> GpuBuffer {
    let bits: Vec<u16> = vals.iter().map(|x| if x.is_nan() { F16_NAN } else { f16::from_f32(*x).to_bits() }).collect();
    ctx.upload("cache", bytemuck::cast_slice(&bits)).unwrap()
}

#[derive(Clone, Debug)]
struct Case {
    b: usize,
    s: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    causal: bool,
    lens: Option<Vec<u32>>,
    /// Key row j is multiplied by 1 + grow·j (scores that keep rising: the lazy rescale path).
    grow: f32,
    /// Query row 3 of every sequence is multiplied by this (beyond f16 for > ~1e5), and K by its
    /// inverse (so the scores stay moderate).
    q_big: f32,
}

#[allow(clippy::too_many_arguments)]
fn case(b: usize, s: usize, h: usize, hkv: usize, d: usize, pos0: usize, causal: bool, lens: Option<Vec<u32>>) -> Case {
    Case { b, s, h, hkv, d, pos0, causal, lens, grow: 0.0, q_big: 1.0 }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    /// `ops::attention::prefill`, which must route to the coop kernel.
    Routed,
    /// Recorded at pos0 = 0 and replayed at the case's pos0 with `prefill_params`.
    Replay,
    /// `prefill_pos`: pos[0] from a buffer, q inside a fused [B·S, (H + 2·Hkv)·D] buffer.
    PosFused,
}

fn run(ctx: &Context, c: &Case, how: How, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let kv_stride = c.pos0 + c.s + 3;
    let valid: Vec<usize> = (0..c.b).map(|bb| c.pos0 + c.lens.as_ref().map_or(c.s, |l| l[bb] as usize)).collect();
    let row = c.h * c.d;
    let mut q = rng.normals(c.b * c.s * row, 1.0);
    if c.q_big != 1.0 {
        for bb in 0..c.b {
            if c.s > 3 {
                q[(bb * c.s + 3) * row..(bb * c.s + 4) * row].iter_mut().for_each(|v| *v *= c.q_big);
            }
        }
    }
    let kscale = 1.0 / c.q_big.sqrt();
    let mut kv = |grow: f32, scale: f32| {
        let mut v = rng.normals(c.b * kv_stride * c.hkv * c.d, 1.0);
        for (i, x) in v.iter_mut().enumerate() {
            let j = (i / (c.hkv * c.d)) % kv_stride;
            *x = f16::from_f32(*x * scale * (1.0 + grow * j as f32)).to_f32();
        }
        for (bb, &n) in valid.iter().enumerate() {
            v[(bb * kv_stride + n) * c.hkv * c.d..(bb + 1) * kv_stride * c.hkv * c.d].fill(f32::NAN);
        }
        v
    };
    let k = kv(c.grow, kscale);
    let v = kv(0.0, 1.0);
    let sh = Shape { b: c.b, s: c.s, s_kv: kv_stride, h: c.h, hkv: c.hkv, d: c.d, pos0: c.pos0, causal: c.causal };
    let want = attention(&q, &k, &v, &sh, c.lens.as_deref());

    let (gk, gv) = (upload_cache(ctx, &k), upload_cache(ctx, &v));
    let glens = c.lens.as_ref().map(|l| ctx.upload_u32("lens", l).unwrap());
    let out = poisoned(ctx, want.len());
    let shape = AttnShape { b: c.b, s: c.s, h: c.h, hkv: c.hkv, d: c.d, kv_stride, q_stride: row, causal: c.causal };
    let pos = ctx.upload_u32("pos", &[c.pos0 as u32]).unwrap();
    let disp = match how {
        How::Routed => {
            prefill(ctx, &ctx.upload_f32("q", &q).unwrap(), &gk, &gv, &pos, &out, &shape, glens.as_ref()).unwrap()
        }
        How::Replay => {
            // Recorded at position 0, then moved by writing pos[0] only.
            let gq = ctx.upload_f32("q", &q).unwrap();
            let zero = ctx.upload_u32("pos", &[0]).unwrap();
            let d = prefill(ctx, &gq, &gk, &gv, &zero, &out, &shape, glens.as_ref()).unwrap();
            ctx.write(&zero, 0, &(c.pos0 as u32).to_le_bytes());
            d
        }
        How::PosFused => {
            let stride = (c.h + 2 * c.hkv) * c.d;
            let mut fused = vec![f32::NAN; c.b * c.s * stride];
            for t in 0..c.b * c.s {
                fused[t * stride..t * stride + row].copy_from_slice(&q[t * row..(t + 1) * row]);
            }
            let gq = ctx.upload_f32("qkv", &fused).unwrap();
            prefill_pos(ctx, &gq, stride, &pos, &gk, &gv, &out, &shape, glens.as_ref()).unwrap()
        }
    };
    assert_eq!(disp.shader, "attention_coop", "{c:?} did not take the coop kernel");
    ctx.run(&[&disp]).unwrap();
    let got = ctx.read_f32(&out, 0, want.len()).unwrap();
    let name = format!("coop attn {c:?} {how:?} [{}]", coop_name(ctx));
    check(&name, &got, &want, bound(ctx));
    if let Some(l) = &c.lens {
        for bb in 0..c.b {
            let pad = &got[(bb * c.s + l[bb] as usize) * row..(bb + 1) * c.s * row];
            assert!(pad.iter().all(|x| *x == 0.0), "{name}: padded rows of sequence {bb} not zero");
        }
    }
    nmse(&got, &want)
}

#[test]
fn causal_prefill() {
    for ctx in coop_contexts() {
        let mut worst = 0f64;
        let cases = [
            case(1, 1, 2, 2, 64, 0, true, None),
            case(1, 7, 4, 2, 64, 0, true, None),
            case(1, 37, 2, 1, 128, 0, true, None),
            case(1, 5, 2, 2, 64, 11, true, None),
            case(1, 100, 4, 4, 64, 0, true, None),
            case(1, 19, 4, 1, 128, 40, true, None),
        ];
        for (i, c) in cases.iter().enumerate() {
            worst = worst.max(run(&ctx, c, How::Routed, 10 + i as u64));
        }
        eprintln!("coop attn causal [{}]: worst nmse {worst:.2e}", coop_name(&ctx));
    }
}

#[test]
fn padded_bidirectional_and_head_dims() {
    for ctx in coop_contexts() {
        let mut worst = 0f64;
        let cases = [
            case(3, 9, 4, 2, 64, 0, false, Some(vec![9, 4, 1])),
            case(2, 33, 2, 2, 128, 0, false, Some(vec![17, 33])),
            case(2, 6, 2, 1, 64, 0, false, None),
            case(2, 21, 4, 2, 64, 0, true, Some(vec![21, 8])),
            case(2, 5, 2, 2, 64, 0, true, Some(vec![5, 0])),
            case(1, 11, 2, 1, 80, 3, true, None),
            case(1, 10, 2, 2, 256, 0, true, None),
        ];
        for (i, c) in cases.iter().enumerate() {
            worst = worst.max(run(&ctx, c, How::Routed, 30 + i as u64));
        }
        eprintln!("coop attn padded/bidirectional/D=80,256 [{}]: worst nmse {worst:.2e}", coop_name(&ctx));
    }
}

#[test]
fn growing_scores_and_huge_queries() {
    for ctx in coop_contexts() {
        // Scores rise along the keys: many rows move their reference maximum (O rescaled in place).
        let grow = Case { grow: 0.08, ..case(1, 90, 2, 1, 64, 0, false, None) };
        run(&ctx, &grow, How::Routed, 41);
        run(&ctx, &Case { grow: 0.05, ..case(1, 70, 2, 2, 128, 5, true, None) }, How::Routed, 42);
        // Query row 3 at ~1e6 (|q·scale| far beyond f16): that row is staged scaled down.
        run(&ctx, &Case { q_big: 1.0e6, ..case(2, 20, 2, 1, 64, 0, true, None) }, How::Routed, 43);
    }
}

#[test]
fn replay_and_position_buffer() {
    for ctx in coop_contexts() {
        run(&ctx, &case(1, 12, 4, 2, 64, 9, true, None), How::Replay, 51);
        run(&ctx, &case(1, 12, 4, 2, 64, 9, true, None), How::PosFused, 52);
        run(&ctx, &case(2, 17, 2, 1, 128, 0, true, Some(vec![17, 6])), How::PosFused, 53);
        run(&ctx, &case(3, 9, 4, 4, 64, 0, false, Some(vec![9, 4, 1])), How::PosFused, 54);
    }
}

/// Head dims that are not a multiple of 16 stay on the SIMT kernel.
#[test]
fn other_head_dims_fall_back() {
    for ctx in coop_contexts() {
        let (s, h, d) = (4, 2, 72);
        let b = ctx.buffer("b", 1 << 16).unwrap();
        let shape = AttnShape { b: 1, s, h, hkv: h, d, kv_stride: 8, q_stride: h * d, causal: true };
        let disp = prefill(&ctx, &b, &b, &b, &b, &b, &shape, None).unwrap();
        assert_eq!(disp.shader, "attention");
        assert!(prefill_pos(&ctx, &b, 0, &b, &b, &b, &b, &shape, None).is_err());
    }
}
