//! The seam between the HTTP server and the engine: two traits and the plain data that crosses them.
//! Nothing here names a GPU type; `serve::engine` implements both traits over the engine library,
//! `serve::fake` implements them with a scripted, GPU-free model for the router tests.
//!
//! - [`Catalog`] is the CPU side of the loaded models (ids, tokenizers, the chat template). It is
//!   `Send + Sync`: HTTP handlers call it directly, so tokenising never waits behind a generation.
//! - [`Backend`] is the GPU side. It is created on the engine thread by a [`Loader`] and only ever
//!   called there, one request (or one batch of embedding/rerank requests) at a time.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What a loaded model serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal LM: `/v1/chat/completions`, `/v1/completions`.
    Chat,
    /// A text encoder: `/v1/embeddings`.
    Embedding,
    /// A (query, document) scorer: `/v1/rerank`.
    Rerank,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
            ModelKind::Rerank => "rerank",
        }
    }
}

/// One loaded model as the API lists it.
#[derive(Clone, Debug)]
pub struct ModelCard {
    /// The model's id in requests and responses: its directory name.
    pub id: String,
    pub kind: ModelKind,
    /// Most tokens one sequence may hold: the KV-cache length (chat), the longest input
    /// (embedding), the longest pair prompt (rerank).
    pub n_ctx: usize,
    /// `max_tokens` when a request gives none (chat; the generation config's `max_new_tokens`).
    pub default_max_tokens: usize,
    /// Token ids are `0..vocab_size`.
    pub vocab_size: usize,
}

/// One chat message with its text (content parts already joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A chat prompt and what its budget left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// The oldest history messages that did not fit (0: the whole conversation is in `ids`).
    pub dropped_messages: usize,
}

/// A (query, document) prompt for the reranker: its ids and the row whose hidden state is scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RerankPair {
    pub ids: Vec<u32>,
    pub score_pos: usize,
}

/// Sampling settings of one request; `None` keeps the model's default (its generation config).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// A generation the engine runs: `prompt` (already templated and checked against the context) and up to
/// `max_tokens` new tokens.
#[derive(Clone, Debug)]
pub struct GenJob {
    pub model: String,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Who may share cached prompt prefixes with this job: a SHA-256 of the request's API key and
    /// `cache_salt`, `None` for a request with neither (the single-tenant default). A backend that
    /// keeps a prefix between requests reuses it only for the same tenant, so the time to first
    /// token never tells one client what another one sent.
    pub tenant: Option<[u8; 32]>,
}

/// One generated token and the text it completes. The text never splits a UTF-8 character (it is a
/// `String`); it may be empty while a character or a `[spaceN]` literal is still incomplete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub id: u32,
    pub text: String,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A stop id (end of sequence) was produced.
    Eos,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The cancel flag was set, or `on_piece` returned false.
    Cancelled,
}

/// The end of a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenEnd {
    pub reason: EndReason,
    /// Text still held back by the detokeniser when generation ended (usually empty).
    pub tail: String,
    /// Tokens generated (stop ids excluded).
    pub completion_tokens: usize,
    /// Prompt tokens found in the cache (not prefilled again).
    pub cached_tokens: usize,
}

/// What went wrong in the backend, in terms the API can answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// The request cannot be served as given (400).
    Invalid { message: String, param: Option<String> },
    /// The prompt does not fit the context (400 naming both numbers).
    ContextOverflow { n_prompt_tokens: usize, n_ctx: usize },
    /// The engine failed (device error, out of memory): 500, and the server stays up.
    Internal(String),
    /// The GPU device is gone (a driver reset, the device removed): 503, and `/health` answers 503
    /// from then on, since every later call fails too.
    DeviceLost(String),
}

impl BackendError {
    pub fn invalid(message: impl Into<String>) -> Self {
        BackendError::Invalid { message: message.into(), param: None }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Invalid { message, .. } => write!(f, "{message}"),
            BackendError::ContextOverflow { n_prompt_tokens, n_ctx } => {
                write!(f, "the prompt has {n_prompt_tokens} tokens, the context holds {n_ctx}")
            }
            BackendError::Internal(m) => write!(f, "engine error: {m}"),
            BackendError::DeviceLost(m) => write!(f, "the GPU device was lost: {m}"),
        }
    }
}

pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// The CPU side of the loaded models; called from any thread.
pub trait Catalog: Send + Sync {
    /// Every loaded model.
    fn models(&self) -> Vec<ModelCard>;
    /// Token ids of `text` for `model`. Chat/rerank models: `parse_special` recognises special-token
    /// literals (`<|im_start|>`); embedding models add `[CLS] … [SEP]` and truncate, as they embed.
    fn tokenize(&self, model: &str, text: &str, parse_special: bool) -> BackendResult<Vec<u32>>;
    /// The text of `ids` (special tokens as their literal text).
    fn detokenize(&self, model: &str, ids: &[u32]) -> BackendResult<String>;
    /// The bytes of one token, if it exists.
    fn token_bytes(&self, model: &str, id: u32) -> Option<Vec<u8>>;
    /// The chat prompt of `turns` (the model's template, e.g. `make_context`), the oldest history
    /// dropped while it would leave fewer than `reserve` tokens of the context for the completion.
    fn chat_prompt(&self, model: &str, turns: &[Turn], reserve: usize) -> BackendResult<ChatPrompt>;
    /// The reranker prompts of `query` with each document, cut to the model's `n_ctx` as the CLI
    /// cuts them; the query is tokenized once. Stops early (an error nobody reads) once `cancel` is
    /// set: the request is gone.
    fn rerank_pairs(
        &self,
        model: &str,
        query: &str,
        docs: &[String],
        cancel: &AtomicBool,
    ) -> BackendResult<Vec<RerankPair>>;
}

/// What one batched step produced for a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEvent {
    Piece(Piece),
    /// The generation ended (a stop id, its length, a full context): it has left the batch.
    End(GenEnd),
}

/// The GPU side; only the engine thread calls it, one job at a time.
///
/// A backend whose [`Backend::parallel`] is above 1 also runs generations together (continuous
/// batching): the scheduler [`Backend::start`]s up to that many, calls [`Backend::step`] while any
/// runs, and [`Backend::stop`]s one that must end early (a stop string, a cancel, the client gone).
pub trait Backend {
    /// Generations that may share decode steps; 1: one at a time through [`Backend::generate`].
    fn parallel(&self) -> usize {
        1
    }
    /// Add `job` to the running batch; its pieces and end come from [`Backend::step`] under the
    /// returned id.
    fn start(&mut self, job: &GenJob) -> BackendResult<u64> {
        let _ = job;
        Err(BackendError::Internal("this backend runs one generation at a time".into()))
    }
    /// One step of every started generation (and a prefill chunk of a joining one).
    fn step(&mut self) -> BackendResult<Vec<(u64, StepEvent)>> {
        Ok(Vec::new())
    }
    /// End generation `id` now (it leaves the batch); its end as far as it got.
    fn stop(&mut self, id: u64) -> GenEnd {
        let _ = id;
        GenEnd { reason: EndReason::Cancelled, tail: String::new(), completion_tokens: 0, cached_tokens: 0 }
    }
    /// Prefill `job.prompt` and generate, handing each token to `on_piece` (false stops). `cancel`
    /// is checked between prefill chunks and before every decode step.
    fn generate(
        &mut self,
        job: &GenJob,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(Piece) -> bool,
    ) -> BackendResult<GenEnd>;
    /// One embedding per token sequence, in order.
    fn embed(&mut self, model: &str, seqs: &[Vec<u32>]) -> BackendResult<Vec<Vec<f32>>>;
    /// One raw score (a logit) per pair, in order.
    fn rerank(&mut self, model: &str, pairs: &[RerankPair]) -> BackendResult<Vec<f32>>;
}

/// Called by the loader on the engine thread once the models are loaded; runs the engine loop and
/// returns when the server shuts down.
pub type Serve<'a> = &'a mut dyn FnMut(Arc<dyn Catalog>, &mut dyn Backend);

/// Loads the models on the engine thread (so GPU objects never leave it), then calls `serve` with them
/// while they are in scope. An error before `serve` is called is a failed start.
pub type Loader = Box<dyn FnOnce(Serve<'_>) -> std::result::Result<(), String> + Send>;
