//! Logits processors and samplers: greedy, temperature, top-k, top-p, repetition penalty
//! (HF semantics), presence and frequency penalties (OpenAI semantics), seeded.

use crate::loader::config::GenerationConfig;
use crate::rng::Rng;

#[derive(Clone, Debug)]
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
    /// Whether sampling needs the whole logits row (otherwise the GPU argmax is enough).
    pub fn needs_logits(&self) -> bool {
        !self.is_greedy()
            || self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

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
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// Apply the penalties to `logits` in place. `prompt` and `generated` are the token history.
    pub fn penalize(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in prompt.iter().chain(generated) {
                if let Some(s) = seen.get_mut(t as usize) {
                    if !*s {
                        *s = true;
                        let l = &mut logits[t as usize];
                        *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut count = std::collections::HashMap::new();
            for &t in generated {
                *count.entry(t).or_insert(0u32) += 1;
            }
            for (t, n) in count {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Pick the next token from a logits row (penalties first).
    pub fn sample(&mut self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) -> u32 {
        self.penalize(logits, prompt, generated);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let mut u = self.rng.uniform() as f64;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[probs.len() - 1].0
    }
}

impl Sampler {
    /// Sample from the `k` best (id, logit) pairs, best first (the GPU top-k path: exact when
    /// `top_k` ≤ k and no penalty applies, since top-k comes before top-p).
    pub fn sample_candidates(&mut self, cands: &[(u32, f32)]) -> u32 {
        if cands.is_empty() {
            return 0;
        }
        let mut logits: Vec<f32> = cands.iter().map(|c| c.1).collect();
        let i = self.sample(&mut logits, &[], &[]) as usize;
        cands[i.min(cands.len() - 1)].0
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
    fn candidates_sample_like_the_full_row_under_top_k() {
        let logits: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 * 0.05).cos() * 3.0).collect();
        let p = SamplingParams { temperature: 0.7, top_k: 8, top_p: 0.9, seed: 9, ..SamplingParams::greedy() };
        let mut order: Vec<u32> = (0..200).collect();
        order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b)));
        let cands: Vec<(u32, f32)> = order[..8].iter().map(|&i| (i, logits[i as usize])).collect();
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        for _ in 0..50 {
            assert_eq!(a.sample(&mut logits.clone(), &[], &[]), b.sample_candidates(&cands));
        }
    }

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
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { temperature: 1.0, top_k: 3, top_p: 1.0, seed: 42, ..SamplingParams::greedy() };
        let draw = |p: &SamplingParams| -> Vec<u32> {
            let mut s = Sampler::new(p.clone());
            (0..40).map(|_| s.sample(&mut logits.clone(), &[], &[])).collect()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        let mut top: Vec<u32> = (0..50).collect();
        top.sort_by(|x, y| logits[*y as usize].total_cmp(&logits[*x as usize]));
        assert!(a.iter().all(|t| top[..3].contains(t)));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.sample(&mut logits.clone(), &[], &[]), top[0]);
    }
}
