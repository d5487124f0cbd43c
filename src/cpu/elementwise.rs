//! CPU twins of `ops::elementwise`, in f64.

/// out[T, I] = silu(gate) · up for gu [T, 2I] = gate | up per row.
pub fn silu_mul(gu: &[f32], t: usize, i: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(t * i);
    for r in 0..t {
        for j in 0..i {
            let g = gu[r * 2 * i + j] as f64;
            let u = gu[r * 2 * i + i + j] as f64;
            out.push((g / (1.0 + (-g).exp()) * u) as f32);
        }
    }
    out
}

/// out[T, I] = silu(gate) · up for gu [T, 2I] with rows gate_0, up_0, gate_1, up_1, ….
pub fn silu_mul_interleaved(gu: &[f32], t: usize, i: usize) -> Vec<f32> {
    gu[..t * 2 * i]
        .chunks_exact(2)
        .map(|p| {
            let (g, u) = (p[0] as f64, p[1] as f64);
            (g / (1.0 + (-g).exp()) * u) as f32
        })
        .collect()
}

/// erf in f64 (Abramowitz–Stegun 7.1.5 series below 3, continued fraction for erfc above;
/// absolute error below 1e-12: the series loses a few digits to cancellation), the reference for the shader's f32 erf.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(a) = 2/√π · Σ (−1)^n a^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(−a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …))))  (Lentz-free backward form)
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    r.copysign(x)
}

pub fn gelu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (0.5 * *v as f64 * (1.0 + erf(*v as f64 / std::f64::consts::SQRT_2))) as f32).collect()
}

pub fn add(x: &[f32], y: &[f32]) -> Vec<f32> {
    y.iter().zip(x).map(|(a, b)| a + b).collect()
}

/// out[R, C] = x[rows[r], :] for x [T, C] (an index ≥ T gives zeros).
pub fn gather_rows(x: &[f32], t: usize, c: usize, rows: &[u32]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| {
            let r = r as usize;
            (0..c).map(move |j| if r < t { x[r * c + j] } else { 0.0 })
        })
        .collect()
}
