//! CPU twin of `ops::gemv`'s fusions, in f64: y[T, N] = r·(W · (x ⊙ g)) + bias (RMSNorm prologue,
//! r = 1/sqrt(mean(x²) + eps) per token), then SiLU·mul over interleaved gate/up rows, then + y0.
//! W is dense f32 [N, K] (for int4: `cpu::matmul_q4::dequantize`).

/// The fusions of one GEMV (slices as the GPU op's buffers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Fused<'a> {
    /// bias [N]
    pub bias: Option<&'a [f32]>,
    /// The existing y [T, N'] that the result is added to.
    pub acc: Option<&'a [f32]>,
    /// (g [K], eps)
    pub norm: Option<(&'a [f32], f32)>,
    /// Rows 2i, 2i+1 are gate_i, up_i: the output is [T, N/2], silu(gate)·up.
    pub silu: bool,
}

/// y[T, N'] for x [T, K] and W [N, K] (N' = N, or N/2 with `silu`).
pub fn gemv(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, f: &Fused) -> Vec<f32> {
    let n_out = if f.silu { n / 2 } else { n };
    let mut y = vec![0f32; t * n_out];
    for i in 0..t {
        let xr = &x[i * k..(i + 1) * k];
        let mut xs: Vec<f64> = xr.iter().map(|v| *v as f64).collect();
        if let Some((g, eps)) = f.norm {
            let ms = xs.iter().map(|v| v * v).sum::<f64>() / k as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            xs.iter_mut().zip(g).for_each(|(v, g)| *v *= *g as f64 * r);
        }
        let row = |j: usize| -> f64 {
            let s: f64 = w[j * k..(j + 1) * k].iter().zip(&xs).map(|(a, b)| *a as f64 * b).sum();
            s + f.bias.map_or(0.0, |b| b[j] as f64)
        };
        for j in 0..n_out {
            let mut v = if f.silu {
                let (g, u) = (row(2 * j), row(2 * j + 1));
                g / (1.0 + (-g).exp()) * u
            } else {
                row(j)
            };
            if let Some(y0) = f.acc {
                v += y0[i * n_out + j] as f64;
            }
            y[i * n_out + j] = v as f32;
        }
    }
    y
}
