//! CPU twin of `ops::rope`: the angle is the f32 product f32(pos) · inv_freq[i] (as on the GPU),
//! cos/sin and the rotation in f64.

/// Rotate the first `h + hkv` heads of each row of `qkv` [T, (H + 2·Hkv)·D] in place.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(qkv: &mut [f32], t: usize, h: usize, hkv: usize, d: usize, pos0: usize, inv_freq: &[f32]) {
    let stride = (h + 2 * hkv) * d;
    let half = d / 2;
    for ti in 0..t {
        let pos = (pos0 + ti) as f32;
        for head in 0..h + hkv {
            let base = ti * stride + head * d;
            for i in 0..half {
                let a = (pos * inv_freq[i]) as f64;
                let (s, c) = a.sin_cos();
                let x0 = qkv[base + i] as f64;
                let x1 = qkv[base + i + half] as f64;
                qkv[base + i] = (x0 * c - x1 * s) as f32;
                qkv[base + i + half] = (x1 * c + x0 * s) as f32;
            }
        }
    }
}

/// CPU twin of `ops::rope::rope_kv_write` (a composition: `rope_qkv`, then f16 rounding): the Q heads
/// of `qkv` [T, (H + 2·Hkv)·D] are rotated in place (K in `qkv` stays as it was), the rotated K heads
/// and the V heads are rounded to f16 (nearest even) into rows pos0 .. pos0 + T of `cache_k` and
/// `cache_v`, each `[ctx, Hkv, D]` f16 bits.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    qkv: &mut [f32],
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    inv_freq: &[f32],
    cache_k: &mut [u16],
    cache_v: &mut [u16],
) {
    let stride = (h + 2 * hkv) * d;
    let mut rot = qkv[..t * stride].to_vec();
    rope_qkv(&mut rot, t, h, hkv, d, pos0, inv_freq);
    let row = hkv * d;
    for ti in 0..t {
        let (src, dst) = (&rot[ti * stride..][..stride], &mut qkv[ti * stride..][..h * d]);
        dst.copy_from_slice(&src[..h * d]);
        let at = (pos0 + ti) * row;
        for (c, x) in cache_k[at..at + row].iter_mut().zip(&src[h * d..(h + hkv) * d]) {
            *c = half::f16::from_f32(*x).to_bits();
        }
        for (c, x) in cache_v[at..at + row].iter_mut().zip(&src[(h + hkv) * d..]) {
            *c = half::f16::from_f32(*x).to_bits();
        }
    }
}
