//! CPU twins of `ops::sample`: value descending, ties to the lower index.

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
