//! CPU twin of `ops::embedding`: row gather from a row-major f32 table [rows, C].

pub fn embedding(table: &[f32], c: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter().flat_map(|&id| table[id as usize * c..(id as usize + 1) * c].iter().copied()).collect()
}
