//! What the UI asks of a model and what it hears back: a small command/event protocol, the
//! [`Engine`] trait the UI talks to, and [`Worker`], the real engine on its own thread.
//!
//! The UI never waits on the GPU: it sends [`Command`]s, drains [`Event`]s once per frame and is
//! woken (`egui::Context::request_repaint`) whenever an event is sent. Each generation carries its
//! own cancel flag; Stop sets it and the engine stops after the current token (or prefill chunk).
//! The worker uses only the library's public API (`engine::{Lm, Session, generate}`).
//!
//! A command that panics does not take the worker down: the panic is caught, the command ends
//! with `Failed` (or `LoadFailed`), the session is reset, and the next command runs. Should the
//! thread end anyway, `poll` reports the reply in flight as failed rather than leaving it
//! "generating" forever.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{generate, GenOptions, KvFormat, Lm, LmOptions, Session};
use crate::gpu::Context;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{Message, StreamDecoder};

/// Sampling settings of one reply; defaults come from the model's `generation_config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off (HF semantics).
    pub repetition_penalty: f32,
    pub max_new_tokens: usize,
}

impl Default for GenParams {
    /// The published 360Zhinao chat models' generation_config.json.
    fn default() -> Self {
        GenParams { temperature: 1.0, top_p: 0.8, top_k: 0, repetition_penalty: 1.0, max_new_tokens: 1024 }
    }
}

impl GenParams {
    /// The defaults a loaded model declares.
    pub fn from_lm(lm: &Lm) -> GenParams {
        let s = lm.default_sampling();
        GenParams {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            repetition_penalty: s.repetition_penalty,
            max_new_tokens: lm.default_max_new(),
        }
    }

    /// The sampler settings (seeded from the clock: a regenerated reply differs).
    pub fn sampling(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.max(0.0),
            top_k: self.top_k,
            top_p: self.top_p.clamp(0.0, 1.0),
            repetition_penalty: self.repetition_penalty.max(0.01),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed,
        }
    }
}

/// How to load a model: the context and the KV cache's storage (the app's settings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// KV-cache positions; `None`: the model's `max_position_embeddings`.
    pub ctx_len: Option<usize>,
    pub kv: KvFormat,
}

/// What a loaded model is, for the title bar and the context meter.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub dir: PathBuf,
    /// `bf16`, `f16`, `f32` or `GPTQ-Int4`.
    pub format: String,
    /// KV-cache positions of the session (the context the app can use).
    pub ctx_len: usize,
    /// How it was loaded (what the settings asked for).
    pub options: LoadOptions,
    pub defaults: GenParams,
    /// The adapter it runs on.
    pub device: String,
    /// Why the context is smaller than the model's, when it is.
    pub note: Option<String>,
}

/// Timing of one reply, shown under it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyStats {
    /// Tokens of the whole prompt (system, history, the new turn).
    pub prompt_tokens: usize,
    /// Of which found in the KV cache (not prefilled again).
    pub cached_tokens: usize,
    pub new_tokens: usize,
    /// Seconds from the request to the first token (tokenising and prefill included).
    pub ttft_secs: f64,
    /// Decode rate after the first token (0 when fewer than two tokens).
    pub tokens_per_sec: f64,
    /// Context positions in use after the reply.
    pub ctx_used: usize,
}

/// UI → engine.
pub enum Command {
    /// Load a model directory (the previous model is dropped first).
    Load(PathBuf, LoadOptions),
    /// Answer `messages` (an optional system message, alternating turns, ending with the user's).
    Generate { job: u64, messages: Vec<Message>, params: GenParams, cancel: Arc<AtomicBool> },
}

/// Engine → UI.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Bytes of weights uploaded so far.
    LoadProgress {
        done: u64,
        total: u64,
    },
    Loaded(ModelInfo),
    LoadFailed(String),
    /// The prompt is tokenised: its length (the context meter moves before the first token).
    Started {
        job: u64,
        prompt_tokens: usize,
    },
    /// A piece of the reply (UTF-8 safe: never half a character).
    Token {
        job: u64,
        text: String,
    },
    /// The reply ended: `stop` is `eos`, `length`, `context` or `cancelled`.
    Done {
        job: u64,
        stop: String,
        stats: ReplyStats,
    },
    Failed {
        job: u64,
        error: String,
    },
}

/// The UI's view of an engine: commands go in, events come out, nothing blocks.
pub trait Engine {
    fn send(&mut self, cmd: Command);
    /// Events that arrived since the last call, in order.
    fn poll(&mut self) -> Vec<Event>;
}

/// Called by the worker after each event (the UI's repaint request).
pub type Waker = Box<dyn Fn() + Send>;

/// What the worker thread runs commands on: [`Model`] (the library's engine) or, in tests, a
/// double. Each method sends its own progress events; the worker sends the final
/// `Loaded`/`LoadFailed` of a load and the `Failed` of an error or a panic.
pub trait Backend: Send + 'static {
    /// Load a model directory (the previous model is dropped first).
    fn load(&mut self, dir: &Path, opts: LoadOptions, send: &dyn Fn(Event)) -> crate::error::Result<ModelInfo>;
    /// Answer `messages`, sending `Started`, `Token`s and `Done`.
    fn generate(
        &mut self,
        job: u64,
        messages: &[Message],
        params: &GenParams,
        cancel: &AtomicBool,
        send: &dyn Fn(Event),
    ) -> crate::error::Result<()>;
    /// Forget state a failed or panicked command may have left half-written (the KV cache).
    fn reset(&mut self);
}

/// The library's engine on `ctx`: the loaded model and its one session.
pub struct Model {
    ctx: Arc<Context>,
    loaded: Option<(Lm, Session)>,
}

impl Backend for Model {
    fn load(&mut self, dir: &Path, opts: LoadOptions, send: &dyn Fn(Event)) -> crate::error::Result<ModelInfo> {
        self.loaded = None;
        let (lm, session, info) = load(&self.ctx, dir, opts, send)?;
        self.loaded = Some((lm, session));
        Ok(info)
    }
    fn generate(
        &mut self,
        job: u64,
        messages: &[Message],
        params: &GenParams,
        cancel: &AtomicBool,
        send: &dyn Fn(Event),
    ) -> crate::error::Result<()> {
        let (lm, session) =
            self.loaded.as_mut().ok_or_else(|| crate::error::Error::Input("no model is loaded".into()))?;
        reply(lm, session, job, messages, params, cancel, send)
    }
    fn reset(&mut self) {
        if let Some((_, session)) = self.loaded.as_mut() {
            session.reset();
        }
    }
}

/// The real engine on a worker thread that owns the model and one session (its KV cache is
/// reused across turns: only what changed since the last prompt is prefilled).
pub struct Worker {
    tx: Sender<Command>,
    rx: Receiver<Event>,
    /// The reply in flight (sent, not yet `Done`/`Failed`) and whether a load is.
    job: Option<u64>,
    loading: bool,
    /// The thread ended: its end was reported once.
    gone: bool,
}

impl Worker {
    /// Start the worker on `ctx` (the device the UI draws with).
    pub fn spawn(ctx: Arc<Context>, wake: Waker) -> Worker {
        Worker::with_backend(Model { ctx, loaded: None }, wake)
    }

    /// Start a worker thread running commands on `backend`.
    pub fn with_backend(mut backend: impl Backend, wake: Waker) -> Worker {
        let (tx, cmds) = channel::<Command>();
        let (out, rx) = channel::<Event>();
        // Detached: dropping the Worker closes its channel and the loop ends after the current
        // command (the UI cancels a running reply first; a model load cannot be interrupted and
        // must not hold up closing the window).
        std::thread::Builder::new()
            .name("zhinao-engine".into())
            .spawn(move || {
                let send = |e: Event| {
                    let _ = out.send(e);
                    wake();
                };
                worker_loop(&mut backend, &cmds, &send);
            })
            .expect("spawn the engine thread");
        Worker { tx, rx, job: None, loading: false, gone: false }
    }
}

impl Engine for Worker {
    fn send(&mut self, cmd: Command) {
        match &cmd {
            Command::Load(..) => self.loading = true,
            Command::Generate { job, .. } => self.job = Some(*job),
        }
        let _ = self.tx.send(cmd);
    }
    fn poll(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(e) => {
                    match &e {
                        Event::Loaded(_) | Event::LoadFailed(_) => self.loading = false,
                        Event::Done { job, .. } | Event::Failed { job, .. } if self.job == Some(*job) => {
                            self.job = None
                        }
                        _ => {}
                    }
                    events.push(e);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The thread is gone (it never should be): end what the UI still waits for.
                    if !self.gone {
                        self.gone = true;
                        let error = "the engine thread stopped".to_string();
                        if std::mem::take(&mut self.loading) {
                            events.push(Event::LoadFailed(error.clone()));
                        }
                        if let Some(job) = self.job.take() {
                            events.push(Event::Failed { job, error });
                        }
                    }
                    break;
                }
            }
        }
        events
    }
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in the engine (panic: {msg})")
}

/// Runs commands until the UI drops its sender. A command that panics ends with a failure event
/// and a reset backend; the loop goes on.
fn worker_loop(backend: &mut dyn Backend, cmds: &Receiver<Command>, send: &dyn Fn(Event)) {
    while let Ok(cmd) = cmds.recv() {
        match cmd {
            Command::Load(dir, opts) => {
                let r = catch_unwind(AssertUnwindSafe(|| backend.load(&dir, opts, send)));
                match r {
                    Ok(Ok(info)) => send(Event::Loaded(info)),
                    Ok(Err(e)) => send(Event::LoadFailed(e.to_string())),
                    Err(p) => {
                        recover(backend);
                        send(Event::LoadFailed(panic_text(&*p)));
                    }
                }
            }
            Command::Generate { job, messages, params, cancel } => {
                let r = catch_unwind(AssertUnwindSafe(|| backend.generate(job, &messages, &params, &cancel, send)));
                let error = match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(p) => panic_text(&*p),
                };
                // A failed step may leave the cache half-written: start clean next time.
                recover(backend);
                send(Event::Failed { job, error });
            }
        }
    }
}

/// `backend.reset()`, itself guarded: a backend that cannot even reset keeps serving errors.
fn recover(backend: &mut dyn Backend) {
    let _ = catch_unwind(AssertUnwindSafe(|| backend.reset()));
}

fn load(
    ctx: &Arc<Context>,
    dir: &Path,
    options: LoadOptions,
    send: &dyn Fn(Event),
) -> crate::error::Result<(Lm, Session, ModelInfo)> {
    let mut last = Instant::now();
    let mut progress = |done: u64, total: u64| {
        if done >= total || last.elapsed().as_millis() >= 50 {
            last = Instant::now();
            send(Event::LoadProgress { done, total });
        }
    };
    let opts = LmOptions { ctx_len: options.ctx_len, kv: options.kv, ..Default::default() };
    let lm = Lm::load(ctx.clone(), dir, &opts, &mut progress)?;
    let session = lm.session()?;
    let cfg = lm.model.cfg();
    let format = match &cfg.quantization_config {
        Some(q) => format!("GPTQ-Int{}", q.bits),
        None => match cfg.torch_dtype.as_deref() {
            Some("float16") => "f16".into(),
            Some("float32") => "f32".into(),
            _ => "bf16".into(),
        },
    };
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let info = ModelInfo {
        name,
        dir: dir.to_path_buf(),
        format,
        ctx_len: lm.ctx_len,
        options,
        defaults: GenParams::from_lm(&lm),
        device: ctx.info.name.clone(),
        note: lm.note.clone(),
    };
    Ok((lm, session, info))
}

fn reply(
    lm: &Lm,
    session: &mut Session,
    job: u64,
    messages: &[Message],
    params: &GenParams,
    cancel: &AtomicBool,
    send: &dyn Fn(Event),
) -> crate::error::Result<()> {
    let t0 = Instant::now();
    let max_new = params.max_new_tokens.clamp(1, lm.ctx_len.saturating_sub(1).max(1));
    let prompt = lm.chat_prompt(messages, max_new)?;
    send(Event::Started { job, prompt_tokens: prompt.len() });
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    let mut sampler = Sampler::new(params.sampling(seed.unwrap_or(0)));
    let mut decoder = StreamDecoder::new(&lm.tokenizer, true);
    let mut first: Option<Instant> = None;
    let opts = GenOptions { max_new, stop_ids: lm.stop_ids(), cancel: Some(cancel) };
    let gen = generate(session, &prompt, &opts, &mut sampler, &mut |id| {
        first.get_or_insert_with(Instant::now);
        let text = decoder.push(id);
        if !text.is_empty() {
            send(Event::Token { job, text });
        }
        !cancel.load(Ordering::Relaxed)
    })?;
    let tail = decoder.finish();
    if !tail.is_empty() {
        send(Event::Token { job, text: tail });
    }
    let n = gen.output_ids.len();
    let (ttft, rate) = match first {
        Some(f) => {
            let ttft = (f - t0).as_secs_f64();
            let rest = f.elapsed().as_secs_f64();
            (ttft, if n >= 2 && rest > 0.0 { (n - 1) as f64 / rest } else { 0.0 })
        }
        None => (t0.elapsed().as_secs_f64(), 0.0),
    };
    let stats = ReplyStats {
        prompt_tokens: prompt.len(),
        cached_tokens: gen.cached_tokens,
        new_tokens: n,
        ttft_secs: ttft,
        tokens_per_sec: rate,
        ctx_used: session.pos(),
    };
    send(Event::Done { job, stop: gen.stop_reason.as_str().to_string(), stats });
    Ok(())
}
