//! Perplexity over token windows of the session's context (like llama.cpp's perplexity, without
//! overlap), with each position's argmax, the next token's log-probability and the top logits.

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

/// Score `ids` in windows of the session's context length (each window from an empty cache).
pub fn perplexity(s: &mut Session, ids: &[u32], top_k: usize) -> Result<Perplexity> {
    if ids.is_empty() {
        return Err(Error::Input("the input has no tokens".into()));
    }
    let v = s.model().cfg().vocab_size;
    let (mut positions, mut nll, mut scored) = (Vec::new(), 0.0f64, 0usize);
    let windows = ids.len().div_ceil(s.ctx_len());
    for (w, window) in ids.chunks(s.ctx_len()).enumerate() {
        s.reset();
        let logits = s.forward(window, true)?;
        for (i, row) in logits.chunks_exact(v).enumerate() {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            let logprob = window.get(i + 1).map(|&n| row[n as usize] as f64 - lse);
            if let Some(lp) = logprob {
                nll -= lp;
                scored += 1;
            }
            positions.push(PositionScore {
                window: w,
                token: window[i],
                argmax: crate::sampling::argmax(row),
                logprob,
                top: crate::cpu::sample::top_k(row, top_k.min(v)),
            });
        }
    }
    let ppl = if scored > 0 { (nll / scored as f64).exp() } else { f64::NAN };
    Ok(Perplexity { positions, scored, ppl, windows })
}
