//! The CPU sampler's semantics (`sampling`): top-p truncation at the boundary and
//! renormalisation, top-k ties, penalties from a history, and a chi-square goodness-of-fit test
//! of 20,000 seeded draws against the exact kept-set probabilities. No GPU needed.

use zhinao::cpu::sample::{history, penalize_with_history};
use zhinao::rng::Rng;
use zhinao::sampling::{decide, distribution, order_key, Sampler, SamplingParams};

fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, seed: 1, ..SamplingParams::greedy() }
}

/// At T = 1e12 every mass rounds to exactly 1.0, so the top m of V distinct logits hold exactly
/// m / V of the mass: p = m / V keeps exactly m tokens, the next f32 above keeps m + 1.
#[test]
fn top_p_truncates_exactly_at_the_boundary() {
    let v = 64;
    let l: Vec<f32> = (0..v).map(|i| ((i * 37) % v) as f32).collect(); // a permutation of 0..64
    for m in 1..v {
        let p = m as f32 / v as f32;
        assert_eq!(decide(&l, &params(1e12, 0, p), 0).kept, m, "p = m / V, m = {m}");
        let above = f32::from_bits(p.to_bits() + 1);
        assert_eq!(decide(&l, &params(1e12, 0, above), 0).kept, m + 1, "p just above m / V, m = {m}");
        let below = f32::from_bits(p.to_bits() - 1);
        assert_eq!(decide(&l, &params(1e12, 0, below), 0).kept, m, "p just below m / V, m = {m}");
    }
    // The kept tokens are the m largest.
    let d = decide(&l, &params(1e12, 0, 5.0 / 64.0), 0);
    let kept: Vec<usize> = (0..v).filter(|&i| order_key(l[i]) >= d.tau_key).collect();
    assert!(kept.iter().all(|&i| l[i] >= 59.0) && kept.len() == 5);
    // Ties at the boundary are all kept: 8 copies of each value, p reaching into a group.
    let tied: Vec<f32> = (0..v).map(|i| (i / 8) as f32).collect();
    assert_eq!(decide(&tied, &params(1e12, 0, 9.0 / 64.0), 0).kept, 16);
    assert_eq!(decide(&tied, &params(1e12, 0, 8.0 / 64.0), 0).kept, 8);
    // p ≤ 0 still keeps the top token (and its ties).
    assert_eq!(decide(&l, &params(1.0, 0, 0.0), 0).kept, 1);
    assert_eq!(decide(&tied, &params(1.0, 0, 0.0), 0).kept, 8);
}

/// A natural row: the kept set is the smallest upper set reaching p, by the exact masses.
#[test]
fn top_p_boundary_by_the_masses() {
    let l = [3.0f32, 1.0, 2.0, 0.5, 2.5, -1.0];
    let t = 0.9f32;
    let q: Vec<f64> = l.iter().map(|&x| ((x - 3.0) * (1.0 / t)).exp() as f64).collect();
    let s: f64 = q.iter().sum();
    // Cumulative mass in value order 3.0, 2.5, 2.0, 1.0, 0.5, -1.0.
    let order = [0usize, 4, 2, 1, 3, 5];
    let mut cum = 0.0;
    for (m, &i) in order.iter().enumerate() {
        cum += q[i];
        let frac = (cum / s) as f32;
        // A hair below the cumulative fraction keeps m + 1 tokens, a hair above m + 2.
        let below = f32::from_bits(frac.to_bits() - 2);
        assert_eq!(decide(&l, &params(t, 0, below), 0).kept, m + 1, "m = {m}");
        if m + 1 < l.len() {
            let above = f32::from_bits(frac.to_bits() + 2);
            assert_eq!(decide(&l, &params(t, 0, above), 0).kept, m + 2, "m = {m}");
        }
    }
}

#[test]
fn kept_probabilities_are_renormalised() {
    let mut rng = Rng::new(4);
    for (v, t, k, p) in
        [(50, 0.7, 0, 0.8), (50, 1.0, 10, 0.95), (1000, 1.5, 50, 0.5), (7, 0.3, 7, 1.0), (300, 1.0, 0, 1.0)]
    {
        let l = rng.normals(v, 2.0);
        let d = distribution(&l, &params(t, k, p));
        let total: f64 = d.iter().map(|x| x.1).sum();
        assert!((total - 1.0).abs() < 1e-12, "Σ = {total}");
        let dec = decide(&l, &params(t, k, p), 0);
        assert_eq!(d.len(), dec.kept);
        // Each probability is q_i / Σ_kept q with q_i = exp((l_i − max)/T).
        let lmax = l.iter().copied().fold(f32::MIN, f32::max);
        for &(i, pr) in &d {
            let q = ((l[i as usize] - lmax) * (1.0 / t)).exp() as f64;
            assert!((pr - q / dec.kept_mass).abs() < 1e-12);
        }
    }
}

#[test]
fn top_k_keeps_ties_at_the_boundary() {
    let l = [5.0f32, 4.0, 4.0, 3.0, 4.0, 2.0, 5.0];
    let d = |k| decide(&l, &params(1.0, k, 1.0), 0);
    assert_eq!(d(1).k_count, 2); // two 5.0s
    assert_eq!(d(2).k_count, 2);
    assert_eq!(d(3).k_count, 5); // the third value is 4.0: all three 4.0s join
    assert_eq!(d(5).k_count, 5);
    assert_eq!(d(6).k_count, 6);
    assert_eq!(d(7).k_count, 7);
    assert_eq!(d(0).k_count, 7);
    // −0 and +0 are one value.
    let z = [1.0f32, 0.0, -0.0, -1.0];
    assert_eq!(decide(&z, &params(1.0, 2, 1.0), 0).k_count, 3);
    // Draws stay inside the set.
    let mut set = std::collections::HashSet::new();
    for c in 0..400 {
        set.insert(decide(&l, &params(1.0, 3, 1.0), c).token);
    }
    assert_eq!(set, [0, 1, 2, 4, 6].into_iter().collect());
}

#[test]
fn greedy_takes_the_lowest_id_among_ties() {
    let l = [1.0f32, 3.0, 2.0, 3.0];
    assert_eq!(decide(&l, &SamplingParams::greedy(), 5).token, 1);
    // One kept token: no draw.
    assert_eq!(decide(&l, &params(1.0, 1, 1.0), 5).kept, 2);
    assert_eq!(decide(&[0.0, 9.0, 1.0], &params(1.0, 1, 1.0), 5).token, 1);
}

#[test]
fn history_penalties_equal_the_token_list_penalties() {
    let mut rng = Rng::new(6);
    let v = 500;
    let l = rng.normals(v, 2.0);
    let prompt: Vec<u32> = (0..40).map(|_| rng.below(v as u32)).collect();
    let generated: Vec<u32> = (0..30).map(|_| rng.below(60)).collect(); // repeats
    let p = SamplingParams {
        repetition_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: 0.2,
        ..params(1.0, 0, 1.0)
    };
    let mut a = l.clone();
    Sampler::new(p.clone()).penalize(&mut a, &prompt, &generated);
    let mut b = l.clone();
    penalize_with_history(&mut b, &history(&prompt, &generated, v), &p);
    assert_eq!(a, b);
    let changed = a.iter().zip(&l).filter(|(x, y)| x != y).count();
    assert!(changed > 40, "{changed} logits penalised");
}

/// Chi-square critical values at significance 0.001, by degrees of freedom 1..=15.
const CHI2_001: [f64; 15] = [
    10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588, 31.264, 32.909, 34.528, 36.123,
    37.697,
];

/// 20,000 seeded CPU draws (counters 0..20000) against the exact kept-set probabilities: the
/// statistic must stay below the critical value at p = 0.001 (df = kept − 1), no draw may fall
/// outside the kept set, and every kept token must be drawn.
#[test]
fn draws_fit_the_exact_distribution() {
    let l: Vec<f32> = vec![2.0, -1.0, 1.2, 0.3, 1.9, -3.0, 0.9, 1.5, 0.0, -0.5, 1.0, 0.2, 1.7, -2.0];
    for (t, k, p) in [(1.0, 0, 0.8), (0.7, 6, 0.95), (1.5, 0, 1.0), (0.5, 10, 0.5)] {
        let sp = SamplingParams { seed: 77, ..params(t, k, p) };
        let probs = distribution(&l, &sp);
        assert!(probs.len() >= 2 && probs.len() <= 16);
        let n = 20_000u32;
        let mut counts = vec![0usize; l.len()];
        for c in 0..n {
            counts[decide(&l, &sp, c).token as usize] += 1;
        }
        let x2: f64 =
            probs.iter().map(|&(i, q)| (counts[i as usize] as f64 - n as f64 * q).powi(2) / (n as f64 * q)).sum();
        let crit = CHI2_001[probs.len() - 2];
        eprintln!("T {t} top-k {k} top-p {p}: kept {}, chi-square {x2:.2} < {crit}", probs.len());
        assert!(x2 < crit, "chi-square {x2} ≥ {crit} (df {})", probs.len() - 1);
        let outside: usize =
            (0..l.len()).filter(|i| !probs.iter().any(|q| q.0 as usize == *i)).map(|i| counts[i]).sum();
        assert_eq!(outside, 0);
        assert!(probs.iter().all(|q| counts[q.0 as usize] > 0));
    }
}
