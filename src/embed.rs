//! Text embeddings with a BERT encoder (360Zhinao-search, spec §6): tokenise, pack sequences into
//! padded batches by a token budget, run the encoder, pool (`[CLS]` or the mean over the mask), and
//! L2-normalise. Results come back in input order.
//!
//! Inputs longer than the model's limit (`loader::bert_max_len`: sentence-transformers'
//! `max_seq_length`, else `max_position_embeddings`) are truncated, as the reference FlagModel and
//! sentence-transformers do, and reported ([`Embedder::tokenize_texts`]); with
//! `EmbedOptions::truncate` off they are an error instead.
//!
//! Batching: sequences are sorted by length (longest first) and packed greedily while the padded
//! batch (rows to a power of two, `S_max` to a multiple of 32) holds at most `max_batch_tokens`,
//! so a batch wastes little padding and the budget bounds what the GPU really runs. The padding mask makes a
//! text's embedding independent of its batch neighbours (up to float rounding: a batch of T ≤ 4
//! rows takes the GEMV path, a larger one the tiled GEMM).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::loader::bert_max_len;
use crate::loader::config::{Pooling, PoolingConfig};
use crate::models::bert::{Batch, Bert, Progress};
use crate::tokenizer::BertTokenizer;

/// The query instruction of 360Zhinao-search for C-MTEB retrieval (spec §6), prepended to queries
/// only.
pub const ZHINAO_SEARCH_INSTRUCTION: &str = "为这个句子生成表示以用于检索相关文章：";

/// A query instruction by name (`zhinao-search`), or the string itself.
pub fn query_instruction(name_or_text: &str) -> String {
    match name_or_text {
        "zhinao-search" => ZHINAO_SEARCH_INSTRUCTION.to_string(),
        other => other.to_string(),
    }
}

/// How texts become vectors.
#[derive(Clone, Debug)]
pub struct EmbedOptions {
    /// `None`: `1_Pooling/config.json` when present, else CLS.
    pub pooling: Option<Pooling>,
    /// L2-normalise each embedding (default true).
    pub normalize: bool,
    /// Prepended to queries (`is_query = true`) before tokenisation.
    pub query_instruction: Option<String>,
    /// Most padded tokens (B·S) per batch.
    pub max_batch_tokens: usize,
    /// Truncate an input longer than the model's limit (default true); when false such an input
    /// is an error.
    pub truncate: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions { pooling: None, normalize: true, query_instruction: None, max_batch_tokens: 8192, truncate: true }
    }
}

/// An input that was longer than the model's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Its position in the inputs.
    pub index: usize,
    /// Its length in tokens before truncation (`[CLS]`/`[SEP]` included).
    pub tokens: usize,
}

/// A loaded embedding model: encoder, tokenizer, pooling, and a reusable workspace.
pub struct Embedder {
    pub model: Bert,
    pub tokenizer: BertTokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    pub query_instruction: Option<String>,
    pub max_batch_tokens: usize,
    pub truncate: bool,
    /// Where the tokenizer's limit comes from, for messages.
    pub limit_source: &'static str,
}

impl Embedder {
    /// Load a model directory (weights, `config.json`, tokenizer, optional `1_Pooling` and
    /// `sentence_bert_config.json`). A missing directory or a causal LM is refused as such.
    pub fn load(ctx: Arc<Context>, dir: &Path, opts: &EmbedOptions, progress: Progress) -> Result<Embedder> {
        let model = Bert::load(ctx, dir, progress)?;
        let (max_len, source) = bert_max_len(dir, model.cfg.max_position_embeddings)?;
        let tokenizer = BertTokenizer::from_model_dir(dir, max_len)?;
        let pooling = match opts.pooling {
            Some(p) => p,
            None => PoolingConfig::load(dir)?.map(|p| p.mode()).transpose()?.unwrap_or(Pooling::Cls),
        };
        let mut e = Embedder::new(model, tokenizer, pooling, opts)?;
        e.limit_source = source;
        Ok(e)
    }

    /// An embedder from parts (`opts.pooling` None means CLS here).
    pub fn new(model: Bert, tokenizer: BertTokenizer, pooling: Pooling, opts: &EmbedOptions) -> Result<Embedder> {
        let max_len = tokenizer.max_len.min(model.cfg.max_position_embeddings);
        if opts.max_batch_tokens < max_len {
            return Err(Error::Input(format!(
                "max_batch_tokens {} is below the longest sequence ({max_len} tokens)",
                opts.max_batch_tokens
            )));
        }
        let max_batch_tokens = opts.max_batch_tokens.min(model.max_rows());
        if max_batch_tokens < max_len {
            return Err(Error::LimitTooSmall {
                what: format!("a batch of one {max_len}-token sequence"),
                requested: max_len as u64,
                available: max_batch_tokens as u64,
            });
        }
        Ok(Embedder {
            model,
            tokenizer,
            pooling,
            normalize: opts.normalize,
            query_instruction: opts.query_instruction.clone(),
            max_batch_tokens,
            truncate: opts.truncate,
            limit_source: "max_len of the tokenizer",
        })
    }

    /// Token ids of one text (`[CLS] … [SEP]`, truncated), with the query instruction if `is_query`.
    pub fn tokenize(&self, text: &str, is_query: bool) -> Result<Vec<u32>> {
        Ok(self.tokenize_checked(text, is_query)?.ids)
    }

    fn tokenize_checked(&self, text: &str, is_query: bool) -> Result<crate::tokenizer::Encoded> {
        match (&self.query_instruction, is_query) {
            (Some(inst), true) => self.tokenizer.encode_checked(&format!("{inst}{text}")),
            _ => self.tokenizer.encode_checked(text),
        }
    }

    /// Token ids of every text, each truncated to the model's limit, and the texts that were
    /// truncated (whatever `truncate` says: the caller reports or refuses them).
    pub fn tokenize_texts(&self, texts: &[String], is_query: bool) -> Result<(Vec<Vec<u32>>, Vec<Truncated>)> {
        let mut seqs = Vec::with_capacity(texts.len());
        let mut truncated = Vec::new();
        for (index, t) in texts.iter().enumerate() {
            let e = self.tokenize_checked(t, is_query)?;
            if e.truncated() {
                truncated.push(Truncated { index, tokens: e.full_len });
            }
            seqs.push(e.ids);
        }
        Ok((seqs, truncated))
    }

    /// The error for an input over the limit when truncation is off.
    pub fn too_long(&self, what: &str, tokens: usize) -> Error {
        Error::Input(format!(
            "{what} has {tokens} tokens, more than the model's limit of {} ({}); truncation is off",
            self.tokenizer.max_len, self.limit_source
        ))
    }

    /// Embeddings of `texts`, in order; the query instruction applies only when `is_query`.
    /// (Signature of `eval::TextEmbedder::embed_texts`.)
    pub fn embed_texts(&self, texts: &[String], is_query: bool) -> Result<Vec<Vec<f32>>> {
        self.embed_with_progress(texts, is_query, &mut |_, _| {})
    }

    /// As [`Self::embed_texts`], reporting (texts done, total) after each batch.
    pub fn embed_with_progress(
        &self,
        texts: &[String],
        is_query: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>> {
        let (seqs, truncated) = self.tokenize_texts(texts, is_query)?;
        if let (false, Some(t)) = (self.truncate, truncated.first()) {
            return Err(self.too_long(&format!("text {}", t.index), t.tokens));
        }
        self.embed_ids(&seqs, progress)
    }

    /// Embeddings of tokenised sequences (each `[CLS] … [SEP]`), in order.
    pub fn embed_ids(&self, seqs: &[Vec<u32>], progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let c = self.model.cfg.hidden_size;
        let mut out = vec![Vec::new(); seqs.len()];
        let mut done = 0;
        for group in pack_by_tokens(seqs, self.max_batch_tokens) {
            let refs: Vec<&[u32]> = group.iter().map(|&i| seqs[i].as_slice()).collect();
            let batch = Batch::pad(&refs, self.tokenizer.pad)?;
            let hidden = self.model.forward(&batch)?;
            for (j, &i) in group.iter().enumerate() {
                let rows = &hidden[j * batch.s * c..(j * batch.s + batch.lens[j] as usize) * c];
                out[i] = pool(rows, c, self.pooling, self.normalize);
            }
            done += group.len();
            progress(done, seqs.len());
        }
        Ok(out)
    }
}

/// Rows a sequence of `len` tokens takes in a GPU batch: the encoders record one forward per shape
/// bucket, S rounded up to a multiple of 32 (`models::bert`, `models::reranker`).
pub fn padded_len(len: usize) -> usize {
    len.max(1).div_ceil(32) * 32
}

/// Groups of indices into `seqs`: sorted longest first, each group padded to its first (longest)
/// member's length, with at most `budget` tokens after the padding the encoder adds (S to
/// [`padded_len`], B to a power of two); a sequence over the budget goes alone. Every index
/// appears exactly once.
pub fn pack_by_tokens(seqs: &[Vec<u32>], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut s_max = 0;
    for i in order {
        match groups.last_mut() {
            Some(g) if (g.len() + 1).next_power_of_two() * s_max <= budget => g.push(i),
            _ => {
                s_max = padded_len(seqs[i].len());
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// One embedding from a sequence's valid rows [n, C]: CLS = row 0, Mean = average of the rows;
/// then optionally L2-normalised (a zero vector stays zero).
pub fn pool(rows: &[f32], c: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let mut v = match pooling {
        Pooling::Cls => rows[..c].to_vec(),
        Pooling::Mean => {
            let n = rows.len() / c;
            let mut acc = vec![0f64; c];
            for r in rows.chunks_exact(c) {
                for (a, x) in acc.iter_mut().zip(r) {
                    *a += *x as f64;
                }
            }
            acc.iter().map(|a| (a / n as f64) as f32).collect()
        }
    };
    if normalize {
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
    }
    v
}

impl crate::eval::TextEmbedder for Embedder {
    fn embed_texts(&self, texts: &[String], is_query: bool) -> Result<Vec<Vec<f32>>> {
        Embedder::embed_texts(self, texts, is_query)
    }
}
