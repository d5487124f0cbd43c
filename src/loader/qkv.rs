//! De-interleaving of Zhinao's fused `qkv_proj` (spec §2.3, §5).
//!
//! The checkpoint groups the output dimension per KV head: viewed as `[Hkv, G+2, D]` with
//! `G = H / Hkv`, group `g` is `[q_{gG}, …, q_{gG+G-1}, k_g, v_g]`, each `D` outputs wide.
//! These functions reorder that dimension into the standard `[Q (H·D) | K (Hkv·D) | V (Hkv·D)]`.
//! For a float weight `[(H+2·Hkv)·D, C]` and the bias `[(H+2·Hkv)·D]` the output dimension is the
//! rows; for GPTQ `qweight` `[C/8, N]`, `scales` `[C/g, N]` and `qzeros` `[C/g, N/8]` it is the
//! columns (whole packed words move: a head is `D/8` qzeros words, so `D % 8 == 0` is required).
//! All functions work on raw little-endian bytes, so the dtype does not matter.

use crate::error::{Error, Result};

/// Head counts of the fused projection: `H` query heads, `Hkv` KV heads, head dim `D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvHeads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl QkvHeads {
    /// Checks `Hkv > 0`, `H % Hkv == 0` and `D > 0`.
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<Self> {
        if n_kv_heads == 0 || head_dim == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::shape(
                "qkv de-interleave",
                format!("{n_heads} heads, {n_kv_heads} kv heads, head dim {head_dim}: kv heads must divide heads"),
            ));
        }
        Ok(QkvHeads { n_heads, n_kv_heads, head_dim })
    }

    /// Query heads per KV head, `G = H / Hkv`.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Head blocks in the fused dimension, `H + 2·Hkv`.
    pub fn n_blocks(&self) -> usize {
        self.n_heads + 2 * self.n_kv_heads
    }

    /// Width of the fused output dimension, `(H + 2·Hkv)·D`.
    pub fn fused_dim(&self) -> usize {
        self.n_blocks() * self.head_dim
    }

    /// For output head block `i` of `[Q | K | V]`, the index of the same block in the interleaved
    /// checkpoint order.
    pub fn source_block(&self, i: usize) -> usize {
        let (h, kv, g) = (self.n_heads, self.n_kv_heads, self.group());
        if i < h {
            (i / g) * (g + 2) + i % g // query head i lives in group i / G, slot i % G
        } else if i < h + kv {
            (i - h) * (g + 2) + g // key head
        } else {
            (i - h - kv) * (g + 2) + g + 1 // value head
        }
    }

    /// Reorders a buffer made of `H + 2·Hkv` equal blocks of `block_bytes` each.
    fn permute_blocks(&self, src: &[u8], block_bytes: usize, out: &mut Vec<u8>) {
        for i in 0..self.n_blocks() {
            let s = self.source_block(i) * block_bytes;
            out.extend_from_slice(&src[s..s + block_bytes]);
        }
    }
}

fn size_error(what: &str, msg: String) -> Error {
    Error::shape(&format!("qkv de-interleave ({what})"), msg)
}

/// Float weight `[(H+2·Hkv)·D, C]` (or any tensor whose rows are the fused outputs): `data` holds
/// `(H+2·Hkv)·D` rows of `row_bytes` each. Returns the rows in `[Q | K | V]` order.
pub fn deinterleave_rows(data: &[u8], row_bytes: usize, heads: &QkvHeads) -> Result<Vec<u8>> {
    let want = heads.fused_dim().checked_mul(row_bytes);
    if want != Some(data.len()) {
        return Err(size_error(
            "rows",
            format!("{} bytes, expected {} rows of {row_bytes} bytes", data.len(), heads.fused_dim()),
        ));
    }
    let mut out = Vec::with_capacity(data.len());
    heads.permute_blocks(data, heads.head_dim * row_bytes, &mut out);
    Ok(out)
}

/// Bias `[(H+2·Hkv)·D]` with elements of `elem_bytes` (2 for f16/bf16, 4 for f32).
pub fn deinterleave_bias(data: &[u8], elem_bytes: usize, heads: &QkvHeads) -> Result<Vec<u8>> {
    deinterleave_rows(data, elem_bytes, heads)
}

/// A row-major matrix whose *columns* are the fused outputs: `data` is `n_rows` rows, each made of
/// `H+2·Hkv` head blocks of `head_block_bytes`. Every row is reordered to `[Q | K | V]`.
pub fn deinterleave_columns(data: &[u8], n_rows: usize, head_block_bytes: usize, heads: &QkvHeads) -> Result<Vec<u8>> {
    let row_bytes = heads.n_blocks() * head_block_bytes;
    if n_rows.checked_mul(row_bytes) != Some(data.len()) {
        return Err(size_error(
            "columns",
            format!(
                "{} bytes, expected {n_rows} rows of {} head blocks of {head_block_bytes} bytes",
                data.len(),
                heads.n_blocks()
            ),
        ));
    }
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks_exact(row_bytes.max(1)) {
        heads.permute_blocks(row, head_block_bytes, &mut out);
    }
    Ok(out)
}

/// GPTQ `qweight` `[C/8, N]` i32 (N = fused outputs): columns move, a head is `D` words.
pub fn deinterleave_gptq_qweight(data: &[u8], heads: &QkvHeads) -> Result<Vec<u8>> {
    let rows = data.len() / (heads.fused_dim() * 4).max(1);
    deinterleave_columns(data, rows, heads.head_dim * 4, heads)
}

/// GPTQ `scales` `[C/g, N]` f16: columns move, a head is `D` halves.
pub fn deinterleave_gptq_scales(data: &[u8], heads: &QkvHeads) -> Result<Vec<u8>> {
    let rows = data.len() / (heads.fused_dim() * 2).max(1);
    deinterleave_columns(data, rows, heads.head_dim * 2, heads)
}

/// GPTQ `qzeros` `[C/g, N/8]` i32: eight 4-bit zeros per word along the outputs, so a head is
/// `D/8` whole words; requires `D % 8 == 0`.
pub fn deinterleave_gptq_qzeros(data: &[u8], heads: &QkvHeads) -> Result<Vec<u8>> {
    if !heads.head_dim.is_multiple_of(8) {
        return Err(size_error("qzeros", format!("head dim {} is not a multiple of 8", heads.head_dim)));
    }
    let words_per_head = heads.head_dim / 8;
    let rows = data.len() / (heads.n_blocks() * words_per_head * 4).max(1);
    deinterleave_columns(data, rows, words_per_head * 4, heads)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's direct formula: fused row `r` is (slot kind, head, d).
    fn classify(r: usize, h: &QkvHeads) -> (char, usize, usize) {
        let (g_sz, hd) = (h.group(), h.head_dim);
        let g = r / ((g_sz + 2) * hd);
        let s = (r % ((g_sz + 2) * hd)) / hd;
        let d = r % hd;
        if s < g_sz {
            ('q', g * g_sz + s, d)
        } else if s == g_sz {
            ('k', g, d)
        } else {
            ('v', g, d)
        }
    }

    /// Output row index of (kind, head, d) in `[Q | K | V]`.
    fn out_row(kind: char, head: usize, d: usize, h: &QkvHeads) -> usize {
        let hd = h.head_dim;
        match kind {
            'q' => head * hd + d,
            'k' => (h.n_heads + head) * hd + d,
            _ => (h.n_heads + h.n_kv_heads + head) * hd + d,
        }
    }

    fn check_rows(n_heads: usize, n_kv: usize, hd: usize) {
        let h = QkvHeads::new(n_heads, n_kv, hd).unwrap();
        let n = h.fused_dim();
        // Row r holds the u16 value r, twice (row_bytes = 4).
        let data: Vec<u8> = (0..n as u16).flat_map(|r| [r.to_le_bytes(), r.to_le_bytes()].concat()).collect();
        let out = deinterleave_rows(&data, 4, &h).unwrap();
        for r in 0..n {
            let (kind, head, d) = classify(r, &h);
            let o = out_row(kind, head, d, &h);
            assert_eq!(u16::from_le_bytes([out[4 * o], out[4 * o + 1]]) as usize, r, "H={n_heads} Hkv={n_kv} row {r}");
        }
    }

    #[test]
    fn rows_mha_and_gqa_match_formula() {
        check_rows(2, 2, 3); // MHA, G = 1
        check_rows(4, 2, 2); // G = 2
        check_rows(8, 2, 2); // G = 4
        check_rows(4, 1, 3); // MQA, G = 4
    }

    #[test]
    fn mha_by_hand() {
        // H = Hkv = 2, D = 1: fused rows q0 k0 v0 q1 k1 v1 → q0 q1 k0 k1 v0 v1.
        let h = QkvHeads::new(2, 2, 1).unwrap();
        let out = deinterleave_bias(&[0, 1, 2, 3, 4, 5], 1, &h).unwrap();
        assert_eq!(out, [0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn gqa2_by_hand() {
        // H = 4, Hkv = 2, D = 1: q0 q1 k0 v0 | q2 q3 k1 v1 → q0 q1 q2 q3 k0 k1 v0 v1.
        let h = QkvHeads::new(4, 2, 1).unwrap();
        let out = deinterleave_bias(&[0, 1, 2, 3, 4, 5, 6, 7], 1, &h).unwrap();
        assert_eq!(out, [0, 1, 4, 5, 2, 6, 3, 7]);
    }

    #[test]
    fn gqa4_by_hand() {
        // H = 8, Hkv = 2, D = 1: q0..q3 k0 v0 | q4..q7 k1 v1.
        let h = QkvHeads::new(8, 2, 1).unwrap();
        let src: Vec<u8> = (0..12).collect();
        let out = deinterleave_bias(&src, 1, &h).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 6, 7, 8, 9, 4, 10, 5, 11]);
    }

    #[test]
    fn columns_match_formula_for_gptq_tensors() {
        for (nh, nkv) in [(2, 2), (4, 2), (8, 2)] {
            let h = QkvHeads::new(nh, nkv, 8).unwrap();
            let n = h.fused_dim();
            // qweight [2, N] i32 and scales [2, N] f16: element (row, c) = row * 1000 + c.
            let qw: Vec<u8> = (0..2 * n).flat_map(|i| ((i / n * 1000 + i % n) as i32).to_le_bytes()).collect();
            let sc: Vec<u8> = (0..2 * n).flat_map(|i| ((i / n * 1000 + i % n) as u16).to_le_bytes()).collect();
            let qw_out = deinterleave_gptq_qweight(&qw, &h).unwrap();
            let sc_out = deinterleave_gptq_scales(&sc, &h).unwrap();
            for row in 0..2 {
                for c in 0..n {
                    let (kind, head, d) = classify(c, &h);
                    let o = row * n + out_row(kind, head, d, &h);
                    let want = row * 1000 + c;
                    assert_eq!(i32::from_le_bytes(qw_out[4 * o..4 * o + 4].try_into().unwrap()) as usize, want);
                    assert_eq!(u16::from_le_bytes([sc_out[2 * o], sc_out[2 * o + 1]]) as usize, want);
                }
            }
            // qzeros [2, N/8]: word w packs outputs 8w..8w+7; a word moves with its outputs.
            let words = n / 8;
            let qz: Vec<u8> = (0..2 * words).flat_map(|i| (i as i32).to_le_bytes()).collect();
            let qz_out = deinterleave_gptq_qzeros(&qz, &h).unwrap();
            for row in 0..2 {
                for w in 0..words {
                    let (kind, head, _) = classify(w * 8, &h);
                    let o = row * words + out_row(kind, head, 0, &h) / 8;
                    assert_eq!(
                        i32::from_le_bytes(qz_out[4 * o..4 * o + 4].try_into().unwrap()) as usize,
                        row * words + w
                    );
                }
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let h = QkvHeads::new(4, 2, 4).unwrap();
        assert!(deinterleave_rows(&[0u8; 10], 2, &h).is_err());
        assert!(deinterleave_gptq_qzeros(&[0u8; 16], &h).is_err()); // D = 4 is not a multiple of 8
        assert!(QkvHeads::new(3, 2, 4).is_err());
    }
}
