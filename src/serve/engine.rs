//! The real backend: [`Catalog`] and [`Backend`] over the engine library's public API
//! (`engine::{Lm, Session, generate}`, `sampling`, the tokenizer's `StreamDecoder`,
//! `embed::Embedder`, `models::reranker::Reranker`). This is the
//! only file of `serve` that names engine types; porting the server to a new engine API means
//! rewriting this file alone.
//!
//! Everything is loaded on the engine thread (GPU objects never leave it) on one shared device. The
//! chat model keeps one `Session` (KV cache and recorded executables) for the server's lifetime; a
//! request reuses the cached prefix it shares with the previous one (a conversation's next turn
//! prefills only the new turn) when both come from the same tenant ([`GenJob::tenant`]); a request
//! of another tenant starts from an empty cache, so its speed reveals nothing of the previous prompt. The prompt is built exactly as `zhinao generate --chat` / `chat`
//! build it (`Lm::chat_prompt`: make_context with the default system prompt; the stop ids of the
//! generation config).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::backend::*;
use crate::embed::{EmbedOptions, Embedder};
use crate::engine::{generate, Batch, BatchOptions, GenOptions, KvFormat, Lm, LmOptions, SeqId, Session, StopReason};
use crate::gpu::{Context, GpuOptions};
use crate::loader::config::GenerationConfig;
use crate::models::reranker::{Reranker, ScorePosition};
use crate::sampling::{Sampler, SamplingOverrides, SamplingParams};
use crate::tokenizer::chat::RERANK_MAX_LEN;
use crate::tokenizer::{
    make_context_report, BertTokenizer, ContextBudget, Message, RerankPrompt, SpecialMode, StreamDecoder, Tokenizer,
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
    /// Chat generations decoded together (continuous batching); 0 or 1: one at a time, with the
    /// conversation prefix kept in the cache between requests.
    pub parallel: usize,
    /// How the chat model's KV cache is stored (one at a time; the batched slots are f16).
    pub kv: KvFormat,
    /// Positions a quantized cache keeps in f16 at its start (default `ops::kv::SINK`).
    pub kv_sink: Option<usize>,
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
        Error::DeviceLost(m) => BackendError::DeviceLost(m),
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
    if opts.parallel > 1 && opts.kv != KvFormat::F16 {
        return Err(Error::Unsupported(format!(
            "--parallel {} decodes from f16 KV-cache slots; --kv-type {} needs --parallel 1",
            opts.parallel, opts.kv
        )));
    }
    let ctx = Context::new(&opts.gpu)?;
    eprintln!("device: {}", ctx.describe());
    let mut ids: Vec<String> = Vec::new();
    let mut cards = Vec::new();

    let chat = match &opts.chat {
        Some(dir) => {
            let t0 = Instant::now();
            let lo = LmOptions { ctx_len: opts.ctx, chunk: opts.chunk.max(1), kv: opts.kv, kv_sink: opts.kv_sink };
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
                n_ctx: r.max_input_len(),
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
            let engine = if opts.parallel > 1 {
                let bo = BatchOptions { parallel: opts.parallel, ctx_len: lm.ctx_len, chunk: opts.chunk.max(1) };
                let batch = Box::new(Batch::new(lm.model.clone(), bo)?);
                eprintln!("chat model {id}: {} generations share decode steps", opts.parallel);
                Chat::Batch { batch, runs: Vec::new() }
            } else {
                Chat::Session(Box::new(lm.session()?))
            };
            Some(ChatRun { id: id.clone(), engine, tok, gen: gen.clone(), tenant: None })
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

    fn chat_prompt(&self, model: &str, turns: &[Turn], reserve: usize) -> BackendResult<ChatPrompt> {
        let Some((_, tok)) = self.chat.as_ref().filter(|(id, _)| id == model) else {
            return Err(BackendError::invalid(format!("{model} is not a chat model")));
        };
        let n_ctx = self.cards.iter().find(|c| c.id == model).map_or(0, |c| c.n_ctx);
        let msgs: Vec<Message> = turns.iter().map(|t| Message::new(&t.role, &t.content)).collect();
        let budget = ContextBudget { model_max_length: n_ctx, max_new_tokens: reserve };
        let (ids, dropped_messages) = make_context_report(tok, &msgs, DEFAULT_SYSTEM, budget).map_err(to_backend)?;
        Ok(ChatPrompt { ids, dropped_messages })
    }

    fn rerank_pairs(
        &self,
        model: &str,
        query: &str,
        docs: &[String],
        cancel: &AtomicBool,
    ) -> BackendResult<Vec<RerankPair>> {
        let Some((_, tok)) = self.rerank.as_ref().filter(|(id, _)| id == model) else {
            return Err(BackendError::invalid(format!("{model} is not a reranker")));
        };
        // The CLI's truncation (`Reranker::inputs_checked`): the card's n_ctx is `max_input_len`.
        let max_len = self.cards.iter().find(|c| c.id == model).map_or(RERANK_MAX_LEN, |c| c.n_ctx);
        let prompt = RerankPrompt::new(tok, query, max_len).map_err(to_backend)?;
        docs.iter()
            .map(|d| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(BackendError::invalid("the request was cancelled"));
                }
                let (input, _) = prompt.input(d).map_err(to_backend)?;
                let score_pos = ScorePosition::default().index(&input);
                Ok(RerankPair { ids: input.ids, score_pos })
            })
            .collect()
    }
}

// ---- the GPU side -------------------------------------------------------------------------------

struct ChatRun<'m> {
    id: String,
    engine: Chat<'m>,
    tok: &'m Tokenizer,
    gen: GenerationConfig,
    /// The tenant whose prompt the session's cache holds.
    tenant: Option<[u8; 32]>,
}

/// One session (a conversation's prefix stays cached between requests), or a batch.
enum Chat<'m> {
    Session(Box<Session>),
    Batch { batch: Box<Batch>, runs: Vec<BatchRun<'m>> },
}

/// A generation in the batch: its detokeniser and token budget.
struct BatchRun<'m> {
    seq: SeqId,
    stream: StreamDecoder<'m>,
    tokens: usize,
    max: usize,
}

impl ChatRun<'_> {
    fn params(&self, s: &Sampling) -> SamplingParams {
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
        SamplingParams::with_overrides(&self.gen, &overrides)
    }
}

struct EngineBackend<'m> {
    chat: Option<ChatRun<'m>>,
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
        let mut sampler = Sampler::new(c.params(&job.sampling));
        let Chat::Session(session) = &mut c.engine else {
            return Err(BackendError::Internal("a batching backend generates through start/step".into()));
        };
        if c.tenant != job.tenant {
            // Another tenant's prefix: never reuse it (a fast answer would confirm a guess of it).
            session.reset();
            c.tenant = job.tenant;
        }
        let mut stream = StreamDecoder::new(c.tok, true);
        let opts = GenOptions { max_new: job.max_tokens, stop_ids: &c.gen.eos_token_id, cancel: Some(cancel) };
        let g = generate(session.as_mut(), &job.prompt, &opts, &mut sampler, &mut |id| {
            on_piece(Piece { id, text: stream.push(id) })
        })
        .map_err(to_backend)?;
        let reason = match g.stop_reason {
            StopReason::Eos => EndReason::Eos,
            StopReason::Length | StopReason::Context => EndReason::Length,
            StopReason::Cancelled => EndReason::Cancelled,
        };
        Ok(GenEnd {
            reason,
            tail: stream.finish(),
            completion_tokens: g.output_ids.len(),
            cached_tokens: g.cached_tokens,
        })
    }

    fn parallel(&self) -> usize {
        match self.chat.as_ref().map(|c| &c.engine) {
            Some(Chat::Batch { batch, .. }) => batch.options().parallel,
            _ => 1,
        }
    }

    fn start(&mut self, job: &GenJob) -> BackendResult<u64> {
        let Some(c) = self.chat.as_mut().filter(|c| c.id == job.model) else {
            return Err(BackendError::invalid(format!("{} is not a chat model", job.model)));
        };
        let params = c.params(&job.sampling);
        let Chat::Batch { batch, runs } = &mut c.engine else {
            return Err(BackendError::Internal("this backend runs one generation at a time".into()));
        };
        let seq = batch.add(&job.prompt, &params).map_err(to_backend)?;
        runs.push(BatchRun { seq, stream: StreamDecoder::new(c.tok, true), tokens: 0, max: job.max_tokens.max(1) });
        Ok(seq.0)
    }

    fn step(&mut self) -> BackendResult<Vec<(u64, StepEvent)>> {
        let Some(ChatRun { engine: Chat::Batch { batch, runs }, gen, .. }) = self.chat.as_mut() else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        for p in batch.step().map_err(to_backend)? {
            let Some(i) = runs.iter().position(|r| r.seq == p.seq) else { continue };
            let r = &mut runs[i];
            let reason = if gen.eos_token_id.contains(&p.token) {
                Some(EndReason::Eos)
            } else {
                r.tokens += 1;
                events.push((p.seq.0, StepEvent::Piece(Piece { id: p.token, text: r.stream.push(p.token) })));
                (r.tokens >= r.max || p.last).then_some(EndReason::Length)
            };
            if let Some(reason) = reason {
                let mut r = runs.remove(i);
                batch.cancel(r.seq);
                let end = GenEnd { reason, tail: r.stream.finish(), completion_tokens: r.tokens, cached_tokens: 0 };
                events.push((p.seq.0, StepEvent::End(end)));
            }
        }
        Ok(events)
    }

    fn stop(&mut self, id: u64) -> GenEnd {
        let mut end =
            GenEnd { reason: EndReason::Cancelled, tail: String::new(), completion_tokens: 0, cached_tokens: 0 };
        if let Some(ChatRun { engine: Chat::Batch { batch, runs }, .. }) = self.chat.as_mut() {
            batch.cancel(SeqId(id));
            if let Some(i) = runs.iter().position(|r| r.seq.0 == id) {
                let mut r = runs.remove(i);
                end.tail = r.stream.finish();
                end.completion_tokens = r.tokens;
            }
        }
        end
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
