//! CPU twins of `ops::sample` (value descending, ties to the lower index) and of the token history
//! of `ops::sampler` (whose sampling twin is `sampling::decide`).

/// (index, value) of the maximum of each row of x[R, N]; the lowest index among equal maxima.
pub fn argmax(x: &[f32], r: usize, n: usize) -> Vec<(u32, f32)> {
    x.chunks(n)
        .take(r)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            (best as u32, row[best])
        })
        .collect()
}

/// The k best (index, value) pairs of `row`, sorted by value descending, ties to the lower index.
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        row[b as usize].partial_cmp(&row[a as usize]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// The device's token history `hist [V]` (`ops::sampler`): bit 31 = seen (in `prompt` or
/// `generated`), low 31 bits = occurrences in `generated`. Ids ≥ V are ignored.
pub fn history(prompt: &[u32], generated: &[u32], v: usize) -> Vec<u32> {
    let mut h = vec![0u32; v];
    for &t in prompt {
        if let Some(x) = h.get_mut(t as usize) {
            *x |= 1 << 31;
        }
    }
    for &t in generated {
        if let Some(x) = h.get_mut(t as usize) {
            *x = (*x | 1 << 31) + 1;
        }
    }
    h
}

/// Penalties from a `history` row, in place (the twin of the device's penalty step; equal to
/// `Sampler::penalize` on the same tokens).
pub fn penalize_with_history(logits: &mut [f32], hist: &[u32], p: &crate::sampling::SamplingParams) {
    if !p.has_penalty() {
        return;
    }
    for (l, &h) in logits.iter_mut().zip(hist) {
        if h != 0 {
            *l = crate::sampling::penalised(*l, h & 1 << 31 != 0, h & !(1 << 31), p);
        }
    }
}
