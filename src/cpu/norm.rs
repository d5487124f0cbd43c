//! CPU twins of `ops::norm`, in f64. With `residual`, `x` is updated in place (x += r) first.

pub fn rms_norm(x: &mut [f32], residual: Option<&[f32]>, t: usize, c: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; t * c];
    for i in 0..t {
        let row = &mut x[i * c..(i + 1) * c];
        if let Some(r) = residual {
            row.iter_mut().zip(&r[i * c..(i + 1) * c]).for_each(|(a, b)| *a += b);
        }
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c as f64;
        let scale = 1.0 / (ms + eps as f64).sqrt();
        for j in 0..c {
            y[i * c + j] = (w[j] as f64 * row[j] as f64 * scale) as f32;
        }
    }
    y
}

#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: &mut [f32],
    residual: Option<&[f32]>,
    t: usize,
    c: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
) -> Vec<f32> {
    let mut y = vec![0f32; t * c];
    for i in 0..t {
        let row = &mut x[i * c..(i + 1) * c];
        if let Some(r) = residual {
            row.iter_mut().zip(&r[i * c..(i + 1) * c]).for_each(|(a, b)| *a += b);
        }
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let scale = 1.0 / (var + eps as f64).sqrt();
        for j in 0..c {
            y[i * c + j] = ((row[j] as f64 - mean) * scale * w[j] as f64 + b[j] as f64) as f32;
        }
    }
    y
}
