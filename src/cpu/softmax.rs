//! CPU twin of `ops::softmax`, in f64.

pub fn softmax(x: &[f32], r: usize, n: usize, log: bool) -> Vec<f32> {
    let mut y = Vec::with_capacity(r * n);
    for row in x.chunks(n).take(r) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64;
        let s: f64 = row.iter().map(|v| (*v as f64 - m).exp()).sum();
        if log {
            y.extend(row.iter().map(|v| (*v as f64 - m - s.ln()) as f32));
        } else {
            y.extend(row.iter().map(|v| ((*v as f64 - m).exp() / s) as f32));
        }
    }
    y
}
