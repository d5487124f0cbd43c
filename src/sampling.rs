//! Logits processors and the sampler: penalties, greedy, temperature, top-k, top-p and a seeded
//! draw. `ops::sampler` (`shaders/sampler.wgsl`) implements exactly these semantics on the device;
//! this module is its CPU twin and the test oracle.
//!
//! For one logits row l[V] and [`SamplingParams`]:
//! 1. **Penalties.** A token is *seen* when it occurs in the prompt or in the generated tokens.
//!    HF's repetition penalty r: a seen token's logit is multiplied by 1/r when positive and by r
//!    otherwise (1/r is rounded once to f32, so the device computes the same bits). Then OpenAI's
//!    penalties: l −= frequency·count + presence·[count > 0], count = occurrences among the
//!    generated tokens.
//! 2. **Greedy** (temperature ≤ 0): the argmax, ties to the lower id.
//! 3. **Order.** Tokens are ordered by their penalised logit ([`order_key`]; −0 = +0). z = l/T is
//!    monotone in l, so this is the order of z, and a tie is an exact tie of l.
//! 4. **top-k** (0 < k < V): K = every token with l ≥ l_(k), the k-th largest value; ties at the
//!    boundary are all kept (HF `TopKLogitsWarper`).
//! 5. **Masses** q_i = exp((l_i − l_max) · (1/T)), in f32 (1/T rounded once to f32).
//! 6. **top-p** (p < 1) over K: τ = the largest value such that Σ_{i∈K, l_i ≥ τ} q_i ≥ p·Σ_{i∈K} q_i;
//!    kept = {i ∈ K : l_i ≥ τ}. Ties at the boundary are all kept; the top token always stays.
//! 7. **Draw.** u = [`rng::uniform_at`](crate::rng::uniform_at)(seed, counter), 24 random bits,
//!    where the counter is **the position of the last token fed** (the sampled token goes at
//!    counter + 1; the caller passes it, so the sampler has no state; on the device it is the decode
//!    step's own position buffer). The token is the
//!    **smallest id** j (id order, not sorted order) with Σ_{i ≤ j, i kept} q_i > u · Σ_{kept} q_i.
//!
//! The kept set equals HF's (sort, cumulative softmax, cut) except when logits tie exactly at
//! the top-k or top-p boundary: HF keeps an arbitrary part of the tied group, we keep all of it.
//! The draw walks the kept tokens in id order rather than by probability; the distribution is
//! the same, the token for a given u is not (and HF's random stream differs anyway).
//! Sums here are f64; the device sums f32, so a device decision may differ only where the CPU's
//! own margin ([`Decision::top_p_margin`], [`Decision::draw_margin`]) is within f32 rounding.

use crate::loader::config::GenerationConfig;
use crate::rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// HF: a seen token's logit is divided by p when positive, multiplied when negative. 1.0 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from every token generated so far.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the generated tokens.
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl SamplingParams {
    /// The defaults of `generation_config.json` (do_sample false means greedy).
    pub fn from_generation_config(g: &GenerationConfig) -> SamplingParams {
        SamplingParams {
            temperature: if g.do_sample { g.temperature } else { 0.0 },
            top_k: g.top_k,
            top_p: g.top_p,
            repetition_penalty: g.repetition_penalty,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    /// Whether any penalty changes the logits.
    pub fn has_penalty(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
    /// Whether sampling needs the whole logits row (otherwise the GPU argmax is enough).
    pub fn needs_logits(&self) -> bool {
        !self.is_greedy() || self.has_penalty()
    }
    /// Temperature, top-p and penalties that the device sampler accepts (finite, 1/T finite, r > 0).
    pub fn check(&self) -> crate::error::Result<()> {
        let ok = self.temperature.is_finite()
            && (self.is_greedy() || (1.0 / self.temperature).is_finite())
            && !self.top_p.is_nan()
            && self.repetition_penalty.is_finite()
            && self.repetition_penalty > 0.0
            && self.presence_penalty.is_finite()
            && self.frequency_penalty.is_finite();
        if !ok {
            return Err(crate::error::Error::Input(format!(
                "sampling parameters out of range (temperature, top_p, penalties finite; repetition penalty > 0): {self:?}"
            )));
        }
        Ok(())
    }
}

/// Logit `l` of a token after the penalties: `seen` = in the prompt or the generated tokens,
/// `count` = occurrences among the generated tokens. Both samplers use exactly this arithmetic.
pub fn penalised(l: f32, seen: bool, count: u32, p: &SamplingParams) -> f32 {
    let mut l = l;
    if seen {
        l = if l > 0.0 { l * (1.0 / p.repetition_penalty) } else { l * p.repetition_penalty };
    }
    if count > 0 {
        l -= p.frequency_penalty * count as f32 + p.presence_penalty;
    }
    l
}

/// An order-preserving u32 key of a float, with −0 and +0 as one value: a < b ⇔ key(a) < key(b)
/// (NaN is not ordered meaningfully). Ties and thresholds are decided on these keys.
pub fn order_key(x: f32) -> u32 {
    let b = if x == 0.0 { 0 } else { x.to_bits() };
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The inverse of [`order_key`] (−0 comes back as +0).
pub fn key_value(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k & 0x7fff_ffff } else { !k })
}

/// What the sampler decided for one row, with the margins that say how robust it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub token: u32,
    /// The kept set is every token with `order_key(l) ≥ tau_key`; `kept` is its size.
    pub kept: usize,
    pub tau_key: u32,
    /// The top-k set K is every token with `order_key(l) ≥ kappa_key`; `k_count` is its size.
    pub k_count: usize,
    pub kappa_key: u32,
    /// The draw's random bits (u = bits · 2^-24).
    pub u_bits: u32,
    /// Σ q over K and over the kept set (f64 sums of the f32 masses).
    pub k_mass: f64,
    pub kept_mass: f64,
    /// min(M(τ) − p·S, p·S − M(τ⁺)) / S over K (M(t) = mass of {l ≥ t}, τ⁺ the next larger value):
    /// how far the top-p decision is from flipping. ∞ when top-p is off or trivial.
    pub top_p_margin: f64,
    /// min(C(j) − u·S, u·S − C(j−1)) / S for the drawn token j (C = cumulative kept mass in id
    /// order): how far the draw is from the neighbouring token. ∞ when one token is kept.
    pub draw_margin: f64,
}

/// Apply the sampling semantics (module doc, steps 2–7) to a penalised logits row.
/// `counter` is the RNG counter: the position of the last token fed.
pub fn decide(l: &[f32], p: &SamplingParams, counter: u32) -> Decision {
    let n = l.len();
    let keys: Vec<u32> = l.iter().map(|&x| order_key(x)).collect();
    let mut imax = 0;
    for (i, &k) in keys.iter().enumerate() {
        if k > keys[imax] {
            imax = i;
        }
    }
    if n == 0 || p.is_greedy() {
        let k = keys.get(imax).copied().unwrap_or(0);
        return single(imax as u32, k, 0);
    }
    let kappa = if p.top_k > 0 && p.top_k < n {
        let mut s = keys.clone();
        *s.select_nth_unstable_by(p.top_k - 1, |a, b| b.cmp(a)).1
    } else {
        keys.iter().copied().min().unwrap_or(0)
    };
    let k: Vec<(u32, f32)> = (0..n).filter(|&i| keys[i] >= kappa).map(|i| (i as u32, l[i])).collect();
    decide_in(&k, p, counter, kappa)
}

fn single(token: u32, key: u32, u_bits: u32) -> Decision {
    Decision {
        token,
        kept: 1,
        tau_key: key,
        k_count: 1,
        kappa_key: key,
        u_bits,
        k_mass: 1.0,
        kept_mass: 1.0,
        top_p_margin: f64::INFINITY,
        draw_margin: f64::INFINITY,
    }
}

/// Steps 5–7 over the top-k set K, given as (id, penalised logit) in ascending id order.
fn decide_in(k: &[(u32, f32)], p: &SamplingParams, counter: u32, kappa_key: u32) -> Decision {
    let keys: Vec<u32> = k.iter().map(|c| order_key(c.1)).collect();
    let top = (0..k.len()).max_by(|&a, &b| keys[a].cmp(&keys[b]).then(b.cmp(&a))).unwrap_or(0);
    let lmax = k[top].1;
    let inv_t = 1.0f32 / p.temperature;
    let q: Vec<f64> = k.iter().map(|c| ((c.1 - lmax) * inv_t).exp() as f64).collect();
    let k_mass: f64 = q.iter().sum();
    let (mut tau, mut top_p_margin) = (kappa_key, f64::INFINITY);
    if p.top_p < 1.0 && keys.iter().any(|&x| x != keys[top]) {
        let mut order: Vec<usize> = (0..k.len()).collect();
        order.sort_by(|&a, &b| keys[b].cmp(&keys[a]));
        let target = p.top_p.max(0.0) as f64 * k_mass;
        let (mut cum, mut i) = (0.0, 0);
        while i < order.len() {
            let key = keys[order[i]];
            let prev = cum;
            while i < order.len() && keys[order[i]] == key {
                cum += q[order[i]];
                i += 1;
            }
            if cum >= target || i == order.len() {
                tau = key;
                top_p_margin = (cum - target).min(target - prev) / k_mass;
                break;
            }
        }
    }
    let kept: Vec<usize> = (0..k.len()).filter(|&i| keys[i] >= tau).collect();
    let kept_mass: f64 = kept.iter().map(|&i| q[i]).sum();
    let u_bits = rng::uniform_bits(p.seed, counter);
    let mut d = Decision {
        token: k[top].0,
        kept: kept.len(),
        tau_key: tau,
        k_count: k.len(),
        kappa_key,
        u_bits,
        k_mass,
        kept_mass,
        top_p_margin,
        draw_margin: f64::INFINITY,
    };
    if kept.len() > 1 {
        let target = u_bits as f64 / (1u64 << 24) as f64 * kept_mass;
        let mut acc = 0.0;
        for &i in &kept {
            let prev = acc;
            acc += q[i];
            if q[i] > 0.0 {
                d.token = k[i].0;
                d.draw_margin = (acc - target).min(target - prev) / kept_mass;
            }
            if acc > target {
                break;
            }
        }
    }
    d
}

/// The exact distribution the draw follows on a penalised row: (id, probability) of every kept
/// token in ascending id order, q_i / Σ_kept q (sums to 1). Greedy: the argmax with probability 1.
pub fn distribution(l: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let d = decide(l, p, 0);
    if p.is_greedy() || d.kept == 1 {
        return vec![(d.token, 1.0)];
    }
    let lmax = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0f32 / p.temperature;
    let kept: Vec<(u32, f64)> = (0..l.len())
        .filter(|&i| order_key(l[i]) >= d.tau_key)
        .map(|i| (i as u32, ((l[i] - lmax) * inv_t).exp() as f64))
        .collect();
    let s: f64 = kept.iter().map(|k| k.1).sum();
    kept.into_iter().map(|(i, q)| (i, q / s)).collect()
}

/// The sampler: penalties then [`decide`]. Stateless; the RNG counter comes with each call.
/// Per-request changes to the generation-config defaults (CLI flags, HTTP request fields); `None`
/// keeps the default.
#[derive(Clone, Debug, Default)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingParams {
    /// The generation-config defaults with `o` applied (an explicit temperature > 0 samples even
    /// when the config says `do_sample: false`).
    pub fn with_overrides(g: &GenerationConfig, o: &SamplingOverrides) -> SamplingParams {
        let mut p = SamplingParams::from_generation_config(g);
        if let Some(t) = o.temperature {
            p.temperature = t;
        }
        if let Some(k) = o.top_k {
            p.top_k = k;
        }
        if let Some(v) = o.top_p {
            p.top_p = v;
        }
        if let Some(v) = o.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(v) = o.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = o.frequency_penalty {
            p.frequency_penalty = v;
        }
        if let Some(v) = o.seed {
            p.seed = v;
        }
        p
    }
}

pub struct Sampler {
    pub params: SamplingParams,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler { params }
    }

    /// Apply the penalties to `logits` in place. `prompt` and `generated` are the token history.
    pub fn penalize(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        let p = &self.params;
        if !p.has_penalty() {
            return;
        }
        let mut hist = std::collections::BTreeMap::new();
        for &t in prompt {
            hist.entry(t).or_insert(0u32);
        }
        for &t in generated {
            *hist.entry(t).or_insert(0u32) += 1;
        }
        for (t, n) in hist {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = penalised(*l, true, n, p);
            }
        }
    }

    /// The next token from a logits row (penalised in place first). `counter` = the position of
    /// the last token fed (the draw's RNG counter).
    pub fn sample(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32], counter: u32) -> u32 {
        self.penalize(logits, prompt, generated);
        decide(logits, &self.params, counter).token
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_follow_hf_and_openai() {
        let s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        });
        let mut l = vec![4.0, -4.0, 1.0, 3.0];
        s.penalize(&mut l, &[0, 1], &[3, 3]);
        assert_eq!(l, vec![2.0, -8.0, 1.0, 1.5 - 0.5 - 0.5]);
    }

    #[test]
    fn order_keys_order_floats() {
        let v = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in v.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{w:?}");
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
        for x in v {
            assert_eq!(key_value(order_key(x)), if x == 0.0 { 0.0 } else { x });
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { temperature: 1.0, top_k: 3, top_p: 1.0, seed: 42, ..SamplingParams::greedy() };
        let draw = |p: &SamplingParams| -> Vec<u32> {
            let s = Sampler::new(p.clone());
            (0..40).map(|c| s.sample(&mut logits.clone(), &[], &[], c)).collect()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        assert_ne!(a, draw(&SamplingParams { seed: 43, ..p.clone() }));
        let mut top: Vec<u32> = (0..50).collect();
        top.sort_by(|x, y| logits[*y as usize].total_cmp(&logits[*x as usize]));
        assert!(a.iter().all(|t| top[..3].contains(t)));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        let g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.sample(&mut logits.clone(), &[], &[], 0), top[0]);
    }
}
