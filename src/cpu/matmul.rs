//! CPU twin of `ops::matmul`: y[T, N] = x[T, K] · W[N, K]ᵀ + bias, accumulated in f64.

pub fn matmul(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0f32; t * n];
    for i in 0..t {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let s: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            y[i * n + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    y
}
