//! The real backend: [`Catalog`] and [`Backend`] over the engine library's public API
//! (`engine::{Lm, Session, generate}`, `sampling`, the tokenizer's `StreamDecoder`,
//! `embed::Embedder`, `models::reranker::Reranker`). This is the
//! only file of `serve` that names engine types; porting the server to a new engine API means
//! rewriting this file alone.
//!
//! Everything is loaded on the engine thread (GPU objects never leave it) on one shared device. The
//! chat model keeps one `Session` (KV cache and recorded executables) for the server's lifetime; a
//! request reuses the cached prefix it shares with the previous one (a conversation's next turn
//! prefills only the new turn). The prompt is built exactly as `zhinao generate --chat` / `chat`
//! build it (`Lm::chat_prompt`: make_context with the default system prompt; the stop ids of the
//! generation config).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::backend::*;
use crate::embed::{EmbedOptions, Embedder};
use crate::engine::{generate, GenOptions, Lm, LmOptions, Session, StopReason};
use crate::gpu::{Context, GpuOptions};
use crate::loader::config::GenerationConfig;
use crate::models::reranker::{Reranker, ScorePosition};
use crate::sampling::{Sampler, SamplingOverrides, SamplingParams};
use crate::tokenizer::chat::RERANK_MAX_LEN;
use crate::tokenizer::{
    make_context, reranker_input, BertTokenizer, ContextBudget, Message, SpecialMode, StreamDecoder, Tokenizer,
    DEFAULT_SYSTEM,
};
use crate::Error;

/// What to load and how.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// A 360Zhinao chat/base model directory.
    pub chat: Option<PathBuf>,
    /// A BERT embedding model directory (360Zhinao-search).
    pub embedding: Option<PathBuf>,
    /// A 360Zhinao reranker directory.
    pub rerank: Option<PathBuf>,
    /// KV-cache length (default: max_position_embeddings, reduced to fit one binding).
    pub ctx: Option<usize>,
    /// Tokens per prefill pass (also the cancellation granularity during prefill).
    pub chunk: usize,
    /// Most padded tokens per embedding forward pass.
    pub embed_batch_tokens: usize,
    pub gpu: GpuOptions,
}

/// The loader `zhinao serve` hands to the server.
pub fn loader(opts: EngineOptions) -> Loader {
    Box::new(move |serve: Serve<'_>| load_and_serve(&opts, serve).map_err(|e| e.to_string()))
}

fn to_backend(e: Error) -> BackendError {
    match e {
        Error::ContextOverflow { tokens, ctx, .. } => {
            BackendError::ContextOverflow { n_prompt_tokens: tokens, n_ctx: ctx }
        }
        Error::Input(m) | Error::Tokenizer(m) => BackendError::invalid(m),
        other => BackendError::Internal(other.to_string()),
    }
}

/// A model's id: its directory name (`a`-`z`… as given; `model` if it has none).
fn dir_id(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canon.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string()
}

fn unique(id: String, taken: &[String], suffix: &str) -> String {
    if taken.contains(&id) {
        format!("{id}-{suffix}")
    } else {
        id
    }
}

fn load_and_serve(opts: &EngineOptions, serve: Serve<'_>) -> crate::Result<()> {
    let ctx = Context::new(&opts.gpu)?;
    eprintln!("device: {}", ctx.describe());
    let mut ids: Vec<String> = Vec::new();
    let mut cards = Vec::new();

    let chat = match &opts.chat {
        Some(dir) => {
            let t0 = Instant::now();
            let lo = LmOptions { ctx_len: opts.ctx, chunk: opts.chunk.max(1), ..Default::default() };
            let lm = Lm::load(ctx.clone(), dir, &lo, &mut |_, _| {})?;
            if let Some(n) = &lm.note {
                eprintln!("note: {n}");
            }
            let (ctx_len, gen) = (lm.ctx_len, lm.gen.clone());
            let tok = Arc::new(Tokenizer::from_model_dir(dir)?);
            let id = dir_id(dir);
            eprintln!("chat model {id}: loaded in {:.1} s, context {ctx_len}", t0.elapsed().as_secs_f64());
            ids.push(id.clone());
            cards.push(ModelCard {
                id: id.clone(),
                kind: ModelKind::Chat,
                n_ctx: ctx_len,
                default_max_tokens: gen.max_new_tokens.max(1),
                vocab_size: lm.model.cfg().vocab_size,
            });
            Some((id, lm, tok, gen))
        }
        None => None,
    };
    let embed = match &opts.embedding {
        Some(dir) => {
            let t0 = Instant::now();
            let eo = EmbedOptions { max_batch_tokens: opts.embed_batch_tokens.max(512), ..Default::default() };
            let e = Embedder::load(ctx.clone(), dir, &eo, &mut |_, _| {})?;
            let max_len = e.tokenizer.max_len.min(e.model.cfg.max_position_embeddings);
            let tok = Arc::new(BertTokenizer::from_model_dir(dir, e.model.cfg.max_position_embeddings)?);
            let id = unique(dir_id(dir), &ids, "embedding");
            eprintln!("embedding model {id}: loaded in {:.1} s, pooling {:?}", t0.elapsed().as_secs_f64(), e.pooling);
            ids.push(id.clone());
            cards.push(ModelCard {
                id: id.clone(),
                kind: ModelKind::Embedding,
                n_ctx: max_len,
                default_max_tokens: 0,
                vocab_size: e.model.cfg.vocab_size,
            });
            Some((id, e, tok))
        }
        None => None,
    };
    let rerank = match &opts.rerank {
        Some(dir) => {
            let t0 = Instant::now();
            let mut r = Reranker::load(ctx.clone(), dir, &mut |_, _| {})?;
            let tok =
                Arc::new(r.tokenizer.take().ok_or_else(|| Error::Tokenizer("the reranker has no tokenizer".into()))?);
            let id = unique(dir_id(dir), &ids, "rerank");
            eprintln!("reranker {id}: loaded in {:.1} s", t0.elapsed().as_secs_f64());
            ids.push(id.clone());
            cards.push(ModelCard {
                id: id.clone(),
                kind: ModelKind::Rerank,
                n_ctx: RERANK_MAX_LEN.min(r.backbone.cfg.max_position_embeddings),
                default_max_tokens: 0,
                vocab_size: r.backbone.cfg.vocab_size,
            });
            Some((id, r, tok))
        }
        None => None,
    };

    let catalog = Arc::new(EngineCatalog {
        cards,
        chat: chat.as_ref().map(|(id, _, tok, _)| (id.clone(), tok.clone())),
        embed: embed.as_ref().map(|(id, _, tok)| (id.clone(), tok.clone())),
        rerank: rerank.as_ref().map(|(id, _, tok)| (id.clone(), tok.clone())),
    });
    let chat_run = match &chat {
        Some((id, lm, tok, gen)) => {
            Some(ChatRun { id: id.clone(), session: lm.session()?, tok: tok.clone(), gen: gen.clone() })
        }
        None => None,
    };
    let mut backend = EngineBackend {
        chat: chat_run,
        embed: embed.as_ref().map(|(id, e, _)| (id.clone(), e)),
        rerank: rerank.as_ref().map(|(id, r, _)| (id.clone(), r)),
    };
    serve(catalog, &mut backend);
    Ok(())
}

// ---- the CPU side -------------------------------------------------------------------------------

struct EngineCatalog {
    cards: Vec<ModelCard>,
    chat: Option<(String, Arc<Tokenizer>)>,
    embed: Option<(String, Arc<BertTokenizer>)>,
    rerank: Option<(String, Arc<Tokenizer>)>,
}

/// A tokenizer of one of the loaded models.
enum Tok<'a> {
    Zhinao(&'a Tokenizer),
    Bert(&'a BertTokenizer),
}

impl EngineCatalog {
    fn tok(&self, model: &str) -> BackendResult<Tok<'_>> {
        match (&self.chat, &self.embed, &self.rerank) {
            (Some((id, t)), _, _) if id == model => Ok(Tok::Zhinao(t)),
            (_, Some((id, t)), _) if id == model => Ok(Tok::Bert(t)),
            (_, _, Some((id, t))) if id == model => Ok(Tok::Zhinao(t)),
            _ => Err(BackendError::invalid(format!("model {model} is not loaded"))),
        }
    }
}

impl Catalog for EngineCatalog {
    fn models(&self) -> Vec<ModelCard> {
        self.cards.clone()
    }

    fn tokenize(&self, model: &str, text: &str, parse_special: bool) -> BackendResult<Vec<u32>> {
        let mode = if parse_special { SpecialMode::All } else { SpecialMode::None };
        match self.tok(model)? {
            Tok::Zhinao(t) => t.encode(text, mode),
            Tok::Bert(t) => t.encode(text),
        }
        .map_err(to_backend)
    }

    fn detokenize(&self, model: &str, ids: &[u32]) -> BackendResult<String> {
        match self.tok(model)? {
            Tok::Zhinao(t) => Ok(t.decode(ids, false)),
            Tok::Bert(_) => Err(BackendError::invalid("detokenize is not supported for the embedding model")),
        }
    }

    fn token_bytes(&self, model: &str, id: u32) -> Option<Vec<u8>> {
        match self.tok(model).ok()? {
            Tok::Zhinao(t) => t.token_bytes(id).map(|b| b.to_vec()),
            Tok::Bert(_) => None,
        }
    }

    fn chat_prompt(&self, model: &str, turns: &[Turn], max_new: usize) -> BackendResult<Vec<u32>> {
        let Some((_, tok)) = self.chat.as_ref().filter(|(id, _)| id == model) else {
            return Err(BackendError::invalid(format!("{model} is not a chat model")));
        };
        let n_ctx = self.cards.iter().find(|c| c.id == model).map_or(0, |c| c.n_ctx);
        let msgs: Vec<Message> = turns.iter().map(|t| Message::new(&t.role, &t.content)).collect();
        let budget = ContextBudget { model_max_length: n_ctx, max_new_tokens: max_new };
        make_context(tok, &msgs, DEFAULT_SYSTEM, budget).map_err(to_backend)
    }

    fn rerank_pairs(&self, model: &str, query: &str, docs: &[String]) -> BackendResult<Vec<RerankPair>> {
        let Some((_, tok)) = self.rerank.as_ref().filter(|(id, _)| id == model) else {
            return Err(BackendError::invalid(format!("{model} is not a reranker")));
        };
        docs.iter()
            .map(|d| {
                let input = reranker_input(tok, query, d).map_err(to_backend)?;
                let score_pos = ScorePosition::default().index(&input);
                Ok(RerankPair { ids: input.ids, score_pos })
            })
            .collect()
    }
}

// ---- the GPU side -------------------------------------------------------------------------------

struct ChatRun {
    id: String,
    session: Session,
    tok: Arc<Tokenizer>,
    gen: GenerationConfig,
}

struct EngineBackend<'m> {
    chat: Option<ChatRun>,
    embed: Option<(String, &'m Embedder)>,
    rerank: Option<(String, &'m Reranker)>,
}

impl Backend for EngineBackend<'_> {
    fn generate(
        &mut self,
        job: &GenJob,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(Piece) -> bool,
    ) -> BackendResult<GenEnd> {
        let Some(c) = self.chat.as_mut().filter(|c| c.id == job.model) else {
            return Err(BackendError::invalid(format!("{} is not a chat model", job.model)));
        };
        let s = &job.sampling;
        let seed =
            s.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
        let overrides = SamplingOverrides {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: Some(seed),
        };
        let mut sampler = Sampler::new(SamplingParams::with_overrides(&c.gen, &overrides));
        let mut stream = StreamDecoder::new(&c.tok, true);
        let opts = GenOptions { max_new: job.max_tokens, stop_ids: &c.gen.eos_token_id, cancel: Some(cancel) };
        let g = generate(&mut c.session, &job.prompt, &opts, &mut sampler, &mut |id| {
            on_piece(Piece { id, text: stream.push(id) })
        })
        .map_err(to_backend)?;
        let reason = match g.stop_reason {
            StopReason::Eos => EndReason::Eos,
            StopReason::Length | StopReason::Context => EndReason::Length,
            StopReason::Cancelled => EndReason::Cancelled,
        };
        Ok(GenEnd { reason, tail: stream.finish(), completion_tokens: g.output_ids.len() })
    }

    fn embed(&mut self, model: &str, seqs: &[Vec<u32>]) -> BackendResult<Vec<Vec<f32>>> {
        let Some((_, e)) = self.embed.as_ref().filter(|(id, _)| id == model) else {
            return Err(BackendError::invalid(format!("{model} is not an embedding model")));
        };
        e.embed_ids(seqs, &mut |_, _| {}).map_err(to_backend)
    }

    fn rerank(&mut self, model: &str, pairs: &[RerankPair]) -> BackendResult<Vec<f32>> {
        let Some((_, r)) = self.rerank.as_ref().filter(|(id, _)| id == model) else {
            return Err(BackendError::invalid(format!("{model} is not a reranker")));
        };
        let rows: Vec<(&[u32], usize)> = pairs.iter().map(|p| (p.ids.as_slice(), p.score_pos)).collect();
        let hidden = r.hidden_rows(&rows).map_err(to_backend)?;
        Ok(hidden.iter().map(|h| r.head.apply(h).raw).collect())
    }
}
