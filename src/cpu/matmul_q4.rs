//! CPU twin of `ops::matmul_q4`: dequantize the AutoGPTQ tensors straight from their checkpoint
//! layout (spec §5), independent of the GPU repack; the product is `cpu::matmul::matmul`.
//! Also `pack_gptq`, which builds AutoGPTQ tensors from integer weights (for tests).
//!
//! All tensors are little-endian bytes as stored in safetensors: `qweight` i32 [K/8, N],
//! `qzeros` i32 [G, N/8], `scales` f16 [G, N], `g_idx` i32 [K] (`None`: g = k / gs).

fn word(data: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([data[4 * i], data[4 * i + 1], data[4 * i + 2], data[4 * i + 3]])
}

/// Dense W [N, K]: W[n, k] = scales[g, n] · (q[k, n] − (z_stored[g, n] + 1)), g = g_idx[k].
/// A reference for tests: panics on inconsistent lengths.
pub fn dequantize(
    k: usize,
    n: usize,
    gs: usize,
    qweight: &[u8],
    qzeros: &[u8],
    scales: &[u8],
    g_idx: Option<&[u8]>,
) -> Vec<f32> {
    let mut w = vec![0f32; n * k];
    for kk in 0..k {
        let g = g_idx.map_or(kk / gs, |b| word(b, kk) as usize);
        for nn in 0..n {
            let q = (word(qweight, (kk / 8) * n + nn) >> (4 * (kk % 8))) & 15;
            let z = (word(qzeros, g * (n / 8) + nn / 8) >> (4 * (nn % 8))) & 15;
            let s = half::f16::from_le_bytes([scales[2 * (g * n + nn)], scales[2 * (g * n + nn) + 1]]).to_f32();
            w[nn * k + kk] = s * (q as f32 - (z as f32 + 1.0));
        }
    }
    w
}

/// AutoGPTQ tensors of one Linear, as little-endian bytes.
#[derive(Clone, Debug)]
pub struct Gptq {
    /// i32 [K/8, N]
    pub qweight: Vec<u8>,
    /// i32 [G, N/8]
    pub qzeros: Vec<u8>,
    /// f16 [G, N]
    pub scales: Vec<u8>,
}

/// Pack integer weights `q` [K, N] (0..15), stored zeros `z_stored` [G, N] (0..15, = zero − 1)
/// and `scales` [G, N] (rounded to f16) into the AutoGPTQ layout. K and N multiples of 8.
pub fn pack_gptq(k: usize, n: usize, q: &[u8], z_stored: &[u8], scales: &[f32]) -> Gptq {
    let groups = z_stored.len() / n;
    let mut qw = vec![0u32; k / 8 * n];
    for kk in 0..k {
        for nn in 0..n {
            qw[(kk / 8) * n + nn] |= (q[kk * n + nn] as u32 & 15) << (4 * (kk % 8));
        }
    }
    let mut qz = vec![0u32; groups * n / 8];
    for g in 0..groups {
        for nn in 0..n {
            qz[g * (n / 8) + nn / 8] |= (z_stored[g * n + nn] as u32 & 15) << (4 * (nn % 8));
        }
    }
    Gptq {
        qweight: qw.iter().flat_map(|v| v.to_le_bytes()).collect(),
        qzeros: qz.iter().flat_map(|v| v.to_le_bytes()).collect(),
        scales: scales.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// A g_idx tensor (i32 [K]) as little-endian bytes.
pub fn g_idx_bytes(g_idx: &[u32]) -> Vec<u8> {
    g_idx.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect()
}
