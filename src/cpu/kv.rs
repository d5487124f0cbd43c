//! CPU twin of `ops::kv` (packing K/V rows into a paged arena in any format) and of
//! `ops::attention_paged` (causal attention over the dequantized cache, f64), plus the measurement
//! that chose how 4-bit keys are stored ([`key_error_study`]).
//!
//! Quantization, as on the GPU: per (position, kv head, group of 32 channels), lo/hi = min/max,
//! scale = f16((hi − lo) / qmax), min = f16(lo), code = clamp(round_half_even((x − min) · (1 /
//! scale)), 0, qmax), x̂ = code · scale + min. Rotated keys: each group is multiplied by the
//! normalised 32-point Walsh–Hadamard matrix first (x̂ then lives in the rotated basis).

use half::f16;

use crate::ops::kv::{KvLayout, GROUP};

/// The normalised 32-point Walsh–Hadamard transform in place (its own inverse).
pub fn hadamard32(x: &mut [f32]) {
    let mut len = 1;
    while len < 32 {
        for i in 0..32 {
            if i & len == 0 {
                let (a, b) = (x[i], x[i + len]);
                x[i] = a + b;
                x[i + len] = a - b;
            }
        }
        len <<= 1;
    }
    x.iter_mut().for_each(|v| *v *= 0.176_776_7_f32);
}

/// Quantize one group (32 values) as the GPU does: (codes, scale, min) with scale and min f16.
pub fn quantize_group(x: &[f32], qmax: u32) -> (Vec<u32>, f16, f16) {
    let lo = x.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s = f16::from_f32((hi - lo) / qmax as f32);
    let m = f16::from_f32(lo);
    let inv = if s.to_f32() > 0.0 { 1.0 / s.to_f32() } else { 0.0 };
    let codes = x.iter().map(|&v| ((v - m.to_f32()) * inv).round_ties_even().clamp(0.0, qmax as f32) as u32).collect();
    (codes, s, m)
}

/// The values a reader sees for one group: code · scale + min (f32, as the kernels compute it).
pub fn dequantize_group(codes: &[u32], s: f16, m: f16) -> Vec<f32> {
    codes.iter().map(|&q| q as f32 * s.to_f32() + m.to_f32()).collect()
}

/// f16 NaN: scale words (and f16 values) of rows a kernel must never read.
pub const NAN_WORD: u32 = 0x7e00_7e00;

/// Pack `vals [n, Hkv, D]` (positions row0 .. row0 + n of arena `a`) into the arena's words.
/// Positions at or past `valid` (global) are poisoned with f16 NaN (values and scales), so a
/// kernel that reads them produces NaN. `keys` selects the key rotation of a rotating format.
pub fn pack_arena(layout: &KvLayout, a: usize, keys: bool, vals: &[f32], valid: usize) -> Vec<u32> {
    let (fmt, hkv, d) = (layout.arena_fmt(a), layout.hkv, layout.d);
    let span = layout.spans(a + 1)[a];
    let rows = span.rows;
    let wpr = fmt.words(d);
    let values = rows * hkv * wpr;
    let mut out = vec![0u32; (layout.arena_bytes(a) / 4) as usize];
    for r in 0..rows {
        let global = span.row0 + r;
        let have = global < valid && (r + 1) * hkv * d <= vals.len();
        for kvh in 0..hkv {
            let w0 = (r * hkv + kvh) * wpr;
            if !have {
                out[w0..w0 + wpr].fill(NAN_WORD);
                if fmt.quantized() {
                    let s0 = values + (r * hkv + kvh) * (d / GROUP);
                    out[s0..s0 + d / GROUP].fill(NAN_WORD);
                }
                continue;
            }
            let x = &vals[(r * hkv + kvh) * d..][..d];
            if !fmt.quantized() {
                for w in 0..wpr {
                    let lo = f16::from_f32(x[2 * w]).to_bits() as u32;
                    let hi = f16::from_f32(x[2 * w + 1]).to_bits() as u32;
                    out[w0 + w] = lo | (hi << 16);
                }
                continue;
            }
            let (epw, bits) = (fmt.epw(), 32 / fmt.epw());
            for g in 0..d / GROUP {
                let mut grp = x[g * GROUP..][..GROUP].to_vec();
                if keys && fmt.rotates_keys() {
                    hadamard32(&mut grp);
                }
                let (codes, s, m) = quantize_group(&grp, fmt.qmax());
                for (i, c) in codes.iter().enumerate() {
                    let w = g * GROUP / epw + i / epw;
                    out[w0 + w] |= c << ((i % epw) * bits);
                }
                out[values + (r * hkv + kvh) * (d / GROUP) + g] = s.to_bits() as u32 | ((m.to_bits() as u32) << 16);
            }
        }
    }
    out
}

/// Dequantize arena `a` back to `[rows, Hkv, D]` f32: what the kernels compute with (rotated keys
/// stay rotated; poisoned rows come back NaN).
pub fn unpack_arena(layout: &KvLayout, a: usize, words: &[u32]) -> Vec<f32> {
    let (fmt, hkv, d) = (layout.arena_fmt(a), layout.hkv, layout.d);
    let rows = layout.arena_rows(a);
    let wpr = fmt.words(d);
    let values = rows * hkv * wpr;
    let mut out = vec![0f32; rows * hkv * d];
    for r in 0..rows {
        for kvh in 0..hkv {
            let w0 = (r * hkv + kvh) * wpr;
            let o = &mut out[(r * hkv + kvh) * d..][..d];
            for (e, y) in o.iter_mut().enumerate() {
                let w = words[w0 + e / fmt.epw()];
                *y = if fmt.quantized() {
                    let sw = words[values + (r * hkv + kvh) * (d / GROUP) + e / GROUP];
                    let (s, m) = (f16::from_bits(sw as u16), f16::from_bits((sw >> 16) as u16));
                    let bits = 32 / fmt.epw();
                    let q = (w >> ((e % fmt.epw()) * bits)) & ((1 << bits) - 1);
                    q as f32 * s.to_f32() + m.to_f32()
                } else {
                    f16::from_bits((w >> ((e % 2) * 16)) as u16).to_f32()
                };
            }
        }
    }
    out
}

/// Keys of arena `a` as [`unpack_arena`] gives them, back in the model's basis: groups of a
/// rotating format's arena rotated again (the transform is its own inverse); others unchanged.
pub fn unrotate_keys(layout: &KvLayout, a: usize, keys: &mut [f32]) {
    if layout.arena_fmt(a).rotates_keys() {
        keys.chunks_exact_mut(GROUP).for_each(hadamard32);
    }
}

/// Reference causal attention of `t` queries `q [T, H, D]` at positions pos0 .. pos0 + t over the
/// dequantized cache `k, v [positions, Hkv, D]` in the model's basis ([`unpack_arena`], then
/// [`unrotate_keys`], arenas concatenated). f64 accumulation. `o [T, H, D]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], t: usize, h: usize, hkv: usize, d: usize, k: &[f32], v: &[f32], pos0: usize) -> Vec<f32> {
    let n = k.len() / (hkv * d);
    let sh = super::attention::Shape { b: 1, s: t, s_kv: n, h, hkv, d, pos0, causal: true };
    super::attention::attention(q, k, v, &sh, None)
}

/// Relative RMS error of attention scores q·k over a set of keys, per scheme.
#[derive(Clone, Debug)]
pub struct KeyError {
    pub scheme: &'static str,
    pub bits_per_value: f64,
    pub score_rel_rms: f64,
    /// Relative RMS error of the attention output (softmax over the keys, random V in f16).
    pub output_rel_rms: f64,
}

/// Synthetic keys with outlier channels (the structure KIVI and KVQuant report for real keys) and
/// the error of each 4-bit key scheme in q·k and in the attention output: per-token q4 as is,
/// per-token q4 after the 32-point Hadamard rotation, per-channel q4 (KIVI-style groups of 32
/// tokens along each channel), and per-token q4 with the first `sink` tokens kept in f16, without
/// and with the rotation (the engine's q4); q8 per token for scale. Only synthetic data: real keys
/// must be measured on real weights.
pub fn key_error_study(
    n: usize,
    d: usize,
    outliers: usize,
    outlier_scale: f32,
    sink: usize,
    seed: u64,
) -> Vec<KeyError> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut keys = rng.normals(n * d, 1.0);
    let chans: Vec<usize> = (0..outliers).map(|i| (i * 37 + 5) % d).collect();
    for r in 0..n {
        for &c in &chans {
            keys[r * d + c] += outlier_scale;
        }
    }
    // Attention sinks: the first tokens have large norms.
    for x in keys.iter_mut().take(sink.min(n) * d) {
        *x *= 3.0;
    }
    let queries = rng.normals(16 * d, 1.0);
    let vals: Vec<f32> = rng.normals(n * d, 1.0);
    let per_token = |rot: bool, qmax: u32, f16_first: usize| -> Vec<f32> {
        let mut out = keys.clone();
        for r in f16_first.min(n)..n {
            for g in 0..d / GROUP {
                let x = &mut out[r * d + g * GROUP..][..GROUP];
                if rot {
                    hadamard32(x);
                }
                let (c, s, m) = quantize_group(x, qmax);
                x.copy_from_slice(&dequantize_group(&c, s, m));
                if rot {
                    hadamard32(x);
                }
            }
        }
        out
    };
    let per_channel = || -> Vec<f32> {
        let mut out = keys.clone();
        for c in 0..d {
            for r0 in (0..n).step_by(GROUP) {
                let rows: Vec<usize> = (r0..(r0 + GROUP).min(n)).collect();
                let x: Vec<f32> = rows.iter().map(|&r| keys[r * d + c]).collect();
                let (codes, s, m) = quantize_group(&x, 15);
                for (&r, y) in rows.iter().zip(dequantize_group(&codes, s, m)) {
                    out[r * d + c] = y;
                }
            }
        }
        out
    };
    let measure = |scheme: &'static str, bits: f64, k: Vec<f32>| -> KeyError {
        let scale = 1.0 / (d as f64).sqrt();
        let (mut se, mut ss, mut oe, mut os) = (0f64, 0f64, 0f64, 0f64);
        for qv in queries.chunks_exact(d) {
            let score = |keys: &[f32]| -> Vec<f64> {
                keys.chunks_exact(d)
                    .map(|kr| kr.iter().zip(qv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale)
                    .collect()
            };
            let (want, got) = (score(&keys), score(&k));
            for (w, g) in want.iter().zip(&got) {
                se += (w - g).powi(2);
                ss += w * w;
            }
            let out = |s: &[f64]| -> Vec<f64> {
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let tot: f64 = p.iter().sum();
                (0..d)
                    .map(|c| p.iter().enumerate().map(|(r, pr)| pr * vals[r * d + c] as f64).sum::<f64>() / tot)
                    .collect()
            };
            let (ow, og) = (out(&want), out(&got));
            for (w, g) in ow.iter().zip(&og) {
                oe += (w - g).powi(2);
                os += w * w;
            }
        }
        KeyError { scheme, bits_per_value: bits, score_rel_rms: (se / ss).sqrt(), output_rel_rms: (oe / os).sqrt() }
    };
    vec![
        measure("q8 per token", 9.0, per_token(false, 255, 0)),
        measure("q4 per token", 5.0, per_token(false, 15, 0)),
        measure("q4 per token + Hadamard-32", 5.0, per_token(true, 15, 0)),
        measure("q4 per channel (KIVI, 32-token groups)", 5.0, per_channel()),
        measure("q4 per token, first tokens f16", 5.0, per_token(false, 15, sink)),
        measure("q4 per token + Hadamard-32, first tokens f16 (engine q4)", 5.0, per_token(true, 15, sink)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kv::KvFormat;

    #[test]
    fn hadamard_is_its_own_inverse_and_keeps_norms() {
        let mut rng = crate::rng::Rng::new(3);
        let x = rng.normals(32, 1.0);
        let mut y = x.clone();
        hadamard32(&mut y);
        let (nx, ny): (f32, f32) = (x.iter().map(|v| v * v).sum(), y.iter().map(|v| v * v).sum());
        assert!((nx - ny).abs() < 1e-4 * nx);
        hadamard32(&mut y);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn pack_then_unpack_is_within_half_a_step() {
        for fmt in KvFormat::ALL {
            let layout = KvLayout::with_rows(fmt, 2, 64, 5, 5).unwrap();
            let mut rng = crate::rng::Rng::new(9);
            let vals = rng.normals(5 * 2 * 64, 1.0);
            let back = unpack_arena(&layout, 0, &pack_arena(&layout, 0, false, &vals, 5));
            for (g, (x, y)) in vals.chunks(32).zip(back.chunks(32)).enumerate() {
                let range = x.iter().cloned().fold(f32::MIN, f32::max) - x.iter().cloned().fold(f32::MAX, f32::min);
                let step = if fmt.quantized() { range / fmt.qmax() as f32 } else { 0.0 };
                let tol = 0.5 * step * 1.01 + 2e-3 * range;
                for (a, b) in x.iter().zip(y) {
                    assert!((a - b).abs() <= tol, "{fmt} group {g}: {a} vs {b} (step {step})");
                }
            }
        }
    }

    #[test]
    fn hadamard_beats_plain_per_token_q4_keys_with_outliers() {
        let r = key_error_study(512, 128, 4, 12.0, 4, 1);
        for e in &r {
            println!(
                "{:<48} {:>4} bpw  score rel-RMS {:.4}  output rel-RMS {:.4}",
                e.scheme, e.bits_per_value, e.score_rel_rms, e.output_rel_rms
            );
        }
        let get = |s: &str| r.iter().find(|e| e.scheme == s).unwrap().score_rel_rms;
        let out = |s: &str| r.iter().find(|e| e.scheme == s).unwrap().output_rel_rms;
        assert!(get("q4 per token + Hadamard-32") < 0.6 * get("q4 per token"), "{r:#?}");
        assert!(get("q8 per token") < get("q4 per token + Hadamard-32"), "{r:#?}");
        // The engine's q4 (rotation and an f16 sink) has the smallest output error of the 4-bit schemes.
        let engine = out("q4 per token + Hadamard-32, first tokens f16 (engine q4)");
        assert!(r.iter().filter(|e| e.bits_per_value == 5.0).all(|e| engine <= e.output_rel_rms), "{r:#?}");
    }
}
