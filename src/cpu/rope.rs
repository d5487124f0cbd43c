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
