//! Perplexity over token windows of the session's context (like llama.cpp's perplexity, without
//! overlap), with each position's argmax, the next token's log-probability and the top logits;
//! optionally beside a baseline session (top-1 agreement and KL divergence, as llama.cpp's
//! `--kl-divergence`), which is how a quantized KV cache's cost is measured.

use crate::error::{Error, Result};

use super::Session;

/// One position's prediction of the next token.
#[derive(Clone, Debug)]
pub struct PositionScore {
    pub window: usize,
    pub token: u32,
    pub argmax: u32,
    /// log p(next token), `None` at a window's last position.
    pub logprob: Option<f64>,
    /// The `top_k` largest logits (id, logit), best first, ties to the lower id.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug)]
pub struct Perplexity {
    pub positions: Vec<PositionScore>,
    /// Tokens whose log-probability was scored.
    pub scored: usize,
    /// exp(mean negative log-likelihood); NaN when nothing was scored.
    pub ppl: f64,
    pub windows: usize,
}

/// How closely a session's predictions follow a baseline's over the same tokens: what a
/// quantized KV cache costs against an f16 one.
#[derive(Clone, Debug)]
pub struct Agreement {
    /// The baseline's perplexity over the same tokens.
    pub base_ppl: f64,
    /// Share of positions whose argmax equals the baseline's.
    pub top1: f64,
    /// Mean and largest KL(baseline ‖ this) over positions, in nats.
    pub mean_kl: f64,
    pub max_kl: f64,
}

/// Score `ids` in windows of the session's context length (each window from an empty cache). The
/// logits are read one prefill chunk at a time, so host memory stays at one chunk's rows however
/// long the text.
pub fn perplexity(s: &mut Session, ids: &[u32], top_k: usize) -> Result<Perplexity> {
    Ok(score(s, None, ids, top_k)?.0)
}

/// As [`perplexity`], with `base` (a session of the same model and context, e.g. with an f16
/// cache) scoring the same windows beside it.
pub fn perplexity_vs(
    s: &mut Session,
    base: &mut Session,
    ids: &[u32],
    top_k: usize,
) -> Result<(Perplexity, Agreement)> {
    if base.ctx_len() != s.ctx_len() {
        return Err(Error::Input(format!(
            "the baseline's context ({}) differs from the session's ({})",
            base.ctx_len(),
            s.ctx_len()
        )));
    }
    let (p, a) = score(s, Some(base), ids, top_k)?;
    Ok((p, a.expect("a baseline was given")))
}

/// log Σ exp(row), in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
    max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
}

fn score(
    s: &mut Session,
    mut base: Option<&mut Session>,
    ids: &[u32],
    top_k: usize,
) -> Result<(Perplexity, Option<Agreement>)> {
    if ids.is_empty() {
        return Err(Error::Input("the input has no tokens".into()));
    }
    let v = s.model().cfg().vocab_size;
    let (mut positions, mut nll, mut scored) = (Vec::new(), 0.0f64, 0usize);
    let (mut base_nll, mut same, mut kl_sum, mut kl_max) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    let (win, chunk) = (s.ctx_len(), s.chunk());
    let windows = ids.len().div_ceil(win);
    for (w, window) in ids.chunks(win).enumerate() {
        s.reset();
        if let Some(b) = base.as_deref_mut() {
            b.reset();
        }
        for (c, piece) in window.chunks(chunk).enumerate() {
            let logits = s.forward(piece, true)?;
            let base_logits = match base.as_deref_mut() {
                Some(b) => Some(b.forward(piece, true)?),
                None => None,
            };
            for (r, row) in logits.chunks_exact(v).enumerate() {
                let i = c * chunk + r;
                let lse = log_sum_exp(row);
                let next = window.get(i + 1).map(|&n| n as usize);
                let logprob = next.map(|n| row[n] as f64 - lse);
                if let Some(lp) = logprob {
                    nll -= lp;
                    scored += 1;
                }
                let argmax = crate::sampling::argmax(row);
                if let Some(bl) = &base_logits {
                    let brow = &bl[r * v..][..v];
                    let blse = log_sum_exp(brow);
                    if let Some(n) = next {
                        base_nll -= brow[n] as f64 - blse;
                    }
                    same += usize::from(crate::sampling::argmax(brow) == argmax);
                    let kl: f64 = brow
                        .iter()
                        .zip(row)
                        .map(|(&b, &a)| {
                            let lb = b as f64 - blse;
                            lb.exp() * (lb - (a as f64 - lse))
                        })
                        .sum();
                    kl_sum += kl.max(0.0);
                    kl_max = kl_max.max(kl);
                }
                positions.push(PositionScore {
                    window: w,
                    token: window[i],
                    argmax,
                    logprob,
                    top: crate::cpu::sample::top_k(row, top_k.min(v)),
                });
            }
        }
    }
    let ppl_of = |nll: f64| if scored > 0 { (nll / scored as f64).exp() } else { f64::NAN };
    let n = positions.len() as f64;
    let agreement = base.map(|_| Agreement {
        base_ppl: ppl_of(base_nll),
        top1: same as f64 / n,
        mean_kl: kl_sum / n,
        max_kl: kl_max.max(0.0),
    });
    Ok((Perplexity { positions, scored, ppl: ppl_of(nll), windows }, agreement))
}
