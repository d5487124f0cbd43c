//! A scripted, GPU-free model set behind [`Catalog`] and [`Backend`], for the router tests: one chat
//! model (`fake-chat`), one embedding model (`fake-embed`) and one reranker (`fake-rerank`).
//!
//! - Tokens are Unicode scalar values (`id = char as u32`); detokenising is the reverse.
//! - The chat template is `"{role}: {content}\n"` per turn, then `"assistant: "`.
//! - A generation emits the characters of [`FakeConfig::reply`], one token each, after
//!   `prefill_delay` (checked for cancellation every millisecond) and `token_delay` per token; then
//!   ends with an end-of-sequence, or at `max_tokens`. `fail_after` injects an engine error,
//!   `hang_on` a stuck device (a prefill that ignores the cancel flag for `hang`), `lose_device_on`
//!   a lost one, and `engine_exits` an engine thread that dies once serving.
//! - The chat model keeps the last prompt as its "cache": a generation reports the prefix it shares
//!   with the previous one as cached, when both come from the same tenant (as the engine does).
//! - `rerank_delay` per document while preparing rerank prompts (checked for cancellation), and a
//!   [`Gate`] that holds `token_bytes` (the pieces of `/tokenize`) until opened, so tests can see
//!   which work runs where and when it stops.
//! - An embedding is 8 numbers from the ids (deterministic, L2-normalised); a rerank score is the number
//!   of query characters that occur in the document, minus 2.
//!
//! [`FakeStats`] counts what ran, so tests can see batching and cancellation.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::backend::*;

/// The fake model's behaviour.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub reply: String,
    pub load_delay: Duration,
    pub prefill_delay: Duration,
    pub token_delay: Duration,
    /// KV-cache length of `fake-chat`.
    pub n_ctx: usize,
    pub default_max_tokens: usize,
    /// Fail (engine error) after this many tokens.
    pub fail_after: Option<usize>,
    /// Fail loading with this message.
    pub load_error: Option<String>,
    /// Panic (a backend bug) when the prompt contains this text.
    pub panic_on: Option<String>,
    /// Block for `hang`, deaf to the cancel flag, when the prompt contains this text.
    pub hang_on: Option<String>,
    pub hang: Duration,
    /// Panic outside any job as soon as the engine loop starts: the engine thread exits.
    pub engine_exits: bool,
    /// Fail with a lost device when the prompt contains this text.
    pub lose_device_on: Option<String>,
    /// How long each embedding or rerank call takes.
    pub embed_delay: Duration,
    /// Time to prepare each rerank document (the tokenizer's work).
    pub rerank_delay: Duration,
    /// Held shut, `token_bytes` waits for it (at most 20 s).
    pub piece_gate: Option<Arc<Gate>>,
}

/// A latch tests open once: until then, whoever waits on it blocks.
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    /// Threads waiting now.
    pub waiting: AtomicUsize,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }
    /// Block until opened, or `limit` has passed.
    pub fn wait(&self, limit: Duration) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(open, limit, |o| !*o);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            reply: "你好，世界! Hello, world. 这是一个测试。".into(),
            load_delay: Duration::ZERO,
            prefill_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            n_ctx: 512,
            default_max_tokens: 64,
            fail_after: None,
            load_error: None,
            panic_on: None,
            rerank_delay: Duration::ZERO,
            piece_gate: None,
            hang_on: None,
            hang: Duration::ZERO,
            engine_exits: false,
            lose_device_on: None,
            embed_delay: Duration::ZERO,
        }
    }
}

/// What the fake engine did.
#[derive(Debug, Default)]
pub struct FakeStats {
    pub generations: AtomicUsize,
    pub tokens: AtomicUsize,
    /// Generations that ended because of the cancel flag or `on_piece` returning false.
    pub cancelled: AtomicUsize,
    /// Generations cancelled before their prefill finished.
    pub cancelled_in_prefill: AtomicUsize,
    /// Sizes (sequences) of each embedding and rerank call.
    pub embed_calls: Mutex<Vec<usize>>,
    pub rerank_calls: Mutex<Vec<usize>>,
    /// Set while a generation runs.
    pub running: AtomicBool,
    /// Rerank documents whose prompt was prepared.
    pub rerank_prepared: AtomicUsize,
}

pub const CHAT: &str = "fake-chat";
pub const EMBED: &str = "fake-embed";
pub const RERANK: &str = "fake-rerank";
const EMBED_CTX: usize = 128;
const SEP: &str = "\n\n";

struct FakeCatalog {
    cfg: FakeConfig,
    stats: Arc<FakeStats>,
}

fn known(model: &str) -> BackendResult<()> {
    match model {
        CHAT | EMBED | RERANK => Ok(()),
        _ => Err(BackendError::invalid(format!("unknown model {model}"))),
    }
}

fn chars(s: &str) -> Vec<u32> {
    s.chars().map(|c| c as u32).collect()
}

impl Catalog for FakeCatalog {
    fn models(&self) -> Vec<ModelCard> {
        let card = |id: &str, kind, n_ctx| ModelCard {
            id: id.into(),
            kind,
            n_ctx,
            default_max_tokens: self.cfg.default_max_tokens,
            vocab_size: 0x11_0000,
        };
        vec![
            card(CHAT, ModelKind::Chat, self.cfg.n_ctx),
            card(EMBED, ModelKind::Embedding, EMBED_CTX),
            card(RERANK, ModelKind::Rerank, 1024),
        ]
    }
    fn tokenize(&self, model: &str, text: &str, _parse_special: bool) -> BackendResult<Vec<u32>> {
        known(model)?;
        let mut ids = chars(text);
        if model == EMBED {
            ids.truncate(EMBED_CTX);
        }
        Ok(ids)
    }
    fn detokenize(&self, model: &str, ids: &[u32]) -> BackendResult<String> {
        known(model)?;
        Ok(ids.iter().map(|&i| char::from_u32(i).unwrap_or('\u{fffd}')).collect())
    }
    fn token_bytes(&self, _model: &str, id: u32) -> Option<Vec<u8>> {
        if let Some(g) = &self.cfg.piece_gate {
            g.wait(Duration::from_secs(20));
        }
        char::from_u32(id).map(|c| c.to_string().into_bytes())
    }
    fn chat_prompt(&self, model: &str, turns: &[Turn], _reserve: usize) -> BackendResult<ChatPrompt> {
        known(model)?;
        if turns.last().is_none_or(|t| t.role != "user") {
            return Err(BackendError::invalid("the last message must be from the user"));
        }
        let mut s = String::new();
        for t in turns {
            s.push_str(&format!("{}: {}\n", t.role, t.content));
        }
        s.push_str("assistant: ");
        Ok(ChatPrompt { ids: chars(&s), dropped_messages: 0 })
    }
    fn rerank_pairs(
        &self,
        model: &str,
        query: &str,
        docs: &[String],
        cancel: &AtomicBool,
    ) -> BackendResult<Vec<RerankPair>> {
        known(model)?;
        docs.iter()
            .map(|d| {
                if !sleep_unless(self.cfg.rerank_delay, cancel) {
                    return Err(BackendError::invalid("cancelled"));
                }
                self.stats.rerank_prepared.fetch_add(1, Ordering::SeqCst);
                let ids = chars(&format!("{query}{SEP}{d}"));
                Ok(RerankPair { score_pos: ids.len() - 1, ids })
            })
            .collect()
    }
}

struct FakeBackend {
    cfg: FakeConfig,
    stats: Arc<FakeStats>,
    /// The tenant and prompt of the previous generation.
    cache: (Option<[u8; 32]>, Vec<u32>),
}

/// Sleep `d` in 1 ms steps; false if cancelled first.
fn sleep_unless(d: Duration, cancel: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1).min(end - Instant::now()));
    }
    !cancel.load(Ordering::SeqCst)
}

impl Backend for FakeBackend {
    fn parallel(&self) -> usize {
        assert!(!self.cfg.engine_exits, "injected engine thread panic");
        1
    }

    fn generate(
        &mut self,
        job: &GenJob,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(Piece) -> bool,
    ) -> BackendResult<GenEnd> {
        known(&job.model)?;
        if let Some(p) = &self.cfg.panic_on {
            let prompt: String = job.prompt.iter().filter_map(|&i| char::from_u32(i)).collect();
            assert!(!prompt.contains(p.as_str()), "injected panic");
        }
        if let Some(l) = &self.cfg.lose_device_on {
            let prompt: String = job.prompt.iter().filter_map(|&i| char::from_u32(i)).collect();
            if prompt.contains(l.as_str()) {
                return Err(BackendError::DeviceLost("injected device loss".into()));
            }
        }
        if let Some(h) = &self.cfg.hang_on {
            let prompt: String = job.prompt.iter().filter_map(|&i| char::from_u32(i)).collect();
            if prompt.contains(h.as_str()) {
                std::thread::sleep(self.cfg.hang);
            }
        }
        let cached = match &self.cache {
            (tenant, prev) if *tenant == job.tenant => prev.iter().zip(&job.prompt).take_while(|(a, b)| a == b).count(),
            _ => 0,
        };
        self.cache = (job.tenant, job.prompt.clone());
        let st = &self.stats;
        st.generations.fetch_add(1, Ordering::SeqCst);
        st.running.store(true, Ordering::SeqCst);
        let end = |reason, n| GenEnd { reason, tail: String::new(), completion_tokens: n, cached_tokens: cached };
        let result = (|| {
            if !sleep_unless(self.cfg.prefill_delay, cancel) {
                st.cancelled.fetch_add(1, Ordering::SeqCst);
                st.cancelled_in_prefill.fetch_add(1, Ordering::SeqCst);
                return Ok(end(EndReason::Cancelled, 0));
            }
            let mut n = 0;
            for c in self.cfg.reply.chars() {
                if n >= job.max_tokens {
                    return Ok(end(EndReason::Length, n));
                }
                if self.cfg.fail_after == Some(n) {
                    return Err(BackendError::Internal("injected failure".into()));
                }
                if n > 0 && !sleep_unless(self.cfg.token_delay, cancel) {
                    st.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Ok(end(EndReason::Cancelled, n));
                }
                n += 1;
                st.tokens.fetch_add(1, Ordering::SeqCst);
                if !on_piece(Piece { id: c as u32, text: c.to_string() }) {
                    st.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Ok(end(EndReason::Cancelled, n));
                }
            }
            Ok(end(EndReason::Eos, n))
        })();
        st.running.store(false, Ordering::SeqCst);
        result
    }

    fn embed(&mut self, model: &str, seqs: &[Vec<u32>]) -> BackendResult<Vec<Vec<f32>>> {
        if model != EMBED {
            return Err(BackendError::invalid(format!("{model} is not an embedding model")));
        }
        self.stats.embed_calls.lock().unwrap_or_else(|p| p.into_inner()).push(seqs.len());
        std::thread::sleep(self.cfg.embed_delay);
        Ok(seqs.iter().map(|s| fake_embedding(s)).collect())
    }

    fn rerank(&mut self, model: &str, pairs: &[RerankPair]) -> BackendResult<Vec<f32>> {
        if model != RERANK {
            return Err(BackendError::invalid(format!("{model} is not a reranker")));
        }
        self.stats.rerank_calls.lock().unwrap_or_else(|p| p.into_inner()).push(pairs.len());
        std::thread::sleep(self.cfg.embed_delay);
        Ok(pairs.iter().map(|p| fake_score(&p.ids)).collect())
    }
}

/// The fake embedding of a token sequence.
pub fn fake_embedding(ids: &[u32]) -> Vec<f32> {
    let mut v = [0f64; 8];
    for (i, &t) in ids.iter().enumerate() {
        v[(t as usize + i) % 8] += 1.0 + (t % 7) as f64;
    }
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| (x / n) as f32).collect()
}

/// The fake raw score of `query\n\ndoc`.
pub fn fake_score(ids: &[u32]) -> f32 {
    let text: String = ids.iter().filter_map(|&i| char::from_u32(i)).collect();
    let (q, d) = text.split_once(SEP).unwrap_or((&text, ""));
    q.chars().filter(|c| d.contains(*c)).count() as f32 - 2.0
}

/// A loader for the fake models.
pub fn loader(cfg: FakeConfig, stats: Arc<FakeStats>) -> Loader {
    Box::new(move |serve: Serve<'_>| {
        std::thread::sleep(cfg.load_delay);
        if let Some(e) = &cfg.load_error {
            return Err(e.clone());
        }
        let catalog = Arc::new(FakeCatalog { cfg: cfg.clone(), stats: stats.clone() });
        let mut backend = FakeBackend { cfg, stats, cache: (None, Vec::new()) };
        serve(catalog, &mut backend);
        Ok(())
    })
}
