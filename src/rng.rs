//! A small seeded random generator (SplitMix64) for test data, and the counter-based uniform the
//! sampler draws with (`uniform_bits`: u32 arithmetic only, so `shaders/sampler.wgsl` computes the
//! same bits on the device).

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n.max(1) as u64) as u32
    }
}

/// A 32-bit integer hash with full avalanche (Chris Wellons' "lowbias32").
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// 24 uniform random bits for (`seed`, `counter`): a keyed hash, no state. The sampler uses
/// u = bits · 2^-24 ∈ [0, 1) with counter = the position of the last token fed, so a
/// replayed step needs no host write and CPU and GPU draw the same u. Mirrored by
/// `uniform_bits` in `shaders/sampler.wgsl`.
pub fn uniform_bits(seed: u64, counter: u32) -> u32 {
    let a = hash32(seed as u32 ^ 0x9e37_79b9);
    let b = hash32((seed >> 32) as u32 ^ 0x85eb_ca6b);
    hash32(hash32(counter ^ a) ^ b) >> 8
}

/// `uniform_bits` as a value in [0, 1).
pub fn uniform_at(seed: u64, counter: u32) -> f64 {
    uniform_bits(seed, counter) as f64 / (1u64 << 24) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_uniform_is_spread_and_seeded() {
        // Mean and a 16-bin histogram of 64K counters; different seeds give different streams.
        let n = 1 << 16;
        let mut bins = [0usize; 16];
        let mut sum = 0.0;
        for c in 0..n {
            let u = uniform_at(7, c);
            assert!((0.0..1.0).contains(&u));
            sum += u;
            bins[(u * 16.0) as usize] += 1;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.005);
        assert!(bins.iter().all(|&b| (b as f64 - 4096.0).abs() < 300.0), "{bins:?}");
        let same = (0..1000).filter(|&c| uniform_bits(1, c) == uniform_bits(2, c)).count();
        assert!(same < 5);
        assert_ne!(uniform_bits(1 << 32, 0), uniform_bits(0, 0));
    }
}
