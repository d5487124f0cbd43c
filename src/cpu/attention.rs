//! CPU twin of `ops::attention`: plain softmax attention accumulated in f64, scale 1/sqrt(D).
//! Query i of sequence b sits at position `pos0 + i`; sequence b has keys 0 .. pos0 + n_b, where
//! n_b = S, or `lens[b]` with a padding mask (query rows i >= lens[b] then output zeros). Causal:
//! query i also sees only keys <= pos0 + i. GQA: query head h reads kv head h / (H / Hkv).

/// Shape of one call: q `[B, S, H, D]`, k and v `[B, S_kv, Hkv, D]` (S_kv >= pos0 + S).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub b: usize,
    pub s: usize,
    pub s_kv: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    pub pos0: usize,
    pub causal: bool,
}

/// o `[B, S, H, D]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], sh: &Shape, lens: Option<&[u32]>) -> Vec<f32> {
    let Shape { b, s, s_kv, h, hkv, d, pos0, causal } = *sh;
    let scale = 1.0 / (d as f64).sqrt();
    let group = h / hkv;
    let mut o = vec![0f32; b * s * h * d];
    for bb in 0..b {
        let n = lens.map_or(s, |l| (l[bb] as usize).min(s));
        for i in 0..n {
            let keys = if causal { pos0 + i + 1 } else { pos0 + n };
            for hh in 0..h {
                let kvh = hh / group;
                let qr = &q[((bb * s + i) * h + hh) * d..][..d];
                let row = |buf: &'_ [f32], j: usize| -> Vec<f64> {
                    buf[((bb * s_kv + j) * hkv + kvh) * d..][..d].iter().map(|x| *x as f64).collect()
                };
                let scores: Vec<f64> = (0..keys)
                    .map(|j| row(k, j).iter().zip(qr).map(|(a, b)| a * *b as f64).sum::<f64>() * scale)
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                let total: f64 = p.iter().sum();
                let mut acc = vec![0f64; d];
                for (j, pj) in p.iter().enumerate() {
                    for (a, x) in acc.iter_mut().zip(row(v, j)) {
                        *a += pj * x;
                    }
                }
                let out = &mut o[((bb * s + i) * h + hh) * d..][..d];
                for (y, a) in out.iter_mut().zip(acc) {
                    *y = (a / total) as f32;
                }
            }
        }
    }
    o
}
