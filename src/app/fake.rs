//! A scripted [`Engine`] for UI tests and demos: loads at once and answers every request with a
//! fixed list of text pieces. A test decides how many pieces each `poll` may hand out
//! ([`FakeControl::release`]), so it can look at the window between two tokens; it also sees every
//! request the UI sent (messages and sampling settings) and which jobs were cancelled.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::engine::{Command, Engine, Event, GenParams, LoadOptions, ModelInfo, ReplyStats};
use crate::tokenizer::Message;

/// The reply of a fresh fake: a little markdown with a code block.
pub const DEFAULT_REPLY: &[&str] =
    &["你好", "！", "我是", "**测试**", "模型", "。\n\n", "```rust\n", "fn main() {}\n", "```"];

/// What the UI asked for in one `Generate`.
#[derive(Clone, Debug)]
pub struct Request {
    pub job: u64,
    pub messages: Vec<Message>,
    pub params: GenParams,
}

struct Job {
    id: u64,
    cancel: Arc<AtomicBool>,
    pieces: VecDeque<String>,
    sent: usize,
    prompt_tokens: usize,
}

struct State {
    events: VecDeque<Event>,
    job: Option<Job>,
    /// Pieces `poll` may still hand out (`usize::MAX`: all at once).
    budget: usize,
    reply: Vec<String>,
    requests: Vec<Request>,
    cancelled: Vec<u64>,
    ctx_len: usize,
    loads: Vec<LoadOptions>,
}

/// The engine half (given to the app).
pub struct FakeEngine {
    state: Arc<Mutex<State>>,
}

/// The test's half.
#[derive(Clone)]
pub struct FakeControl {
    state: Arc<Mutex<State>>,
}

impl FakeEngine {
    /// A fake that streams freely (every piece on the first poll) until told otherwise.
    pub fn new() -> (FakeEngine, FakeControl) {
        let state = Arc::new(Mutex::new(State {
            events: VecDeque::new(),
            job: None,
            budget: usize::MAX,
            reply: DEFAULT_REPLY.iter().map(|s| s.to_string()).collect(),
            requests: Vec::new(),
            cancelled: Vec::new(),
            ctx_len: 4096,
            loads: Vec::new(),
        }));
        (FakeEngine { state: state.clone() }, FakeControl { state })
    }
}

impl FakeControl {
    /// Hand out pieces only when released (see [`FakeControl::release`]).
    pub fn gate(&self) {
        self.lock().budget = 0;
    }
    /// Let `n` more pieces through.
    pub fn release(&self, n: usize) {
        let mut s = self.lock();
        s.budget = s.budget.saturating_add(n);
    }
    /// Stream everything at once from now on.
    pub fn free(&self) {
        self.lock().budget = usize::MAX;
    }
    /// The pieces of the next replies.
    pub fn set_reply(&self, pieces: &[&str]) {
        self.lock().reply = pieces.iter().map(|s| s.to_string()).collect();
    }
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }
    /// The options of every model load the UI asked for, in order.
    pub fn loads(&self) -> Vec<LoadOptions> {
        self.lock().loads.clone()
    }
    /// Jobs that ended because their cancel flag was set.
    pub fn cancelled(&self) -> Vec<u64> {
        self.lock().cancelled.clone()
    }
    /// Whether a reply is being streamed.
    pub fn busy(&self) -> bool {
        self.lock().job.is_some()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn model_info(dir: &Path, max_ctx: usize, options: LoadOptions) -> ModelInfo {
    ModelInfo {
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "fake".into()),
        dir: dir.to_path_buf(),
        format: "bf16".into(),
        ctx_len: options.ctx_len.unwrap_or(max_ctx).min(max_ctx),
        options,
        defaults: GenParams::default(),
        device: "fake".into(),
        note: None,
    }
}

impl Engine for FakeEngine {
    fn send(&mut self, cmd: Command) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match cmd {
            Command::Load(dir, opts) => {
                s.loads.push(opts);
                if dir.as_os_str().is_empty() || !dir.exists() {
                    let e = format!("model directory {} does not exist", dir.display());
                    s.events.push_back(Event::LoadFailed(e));
                } else {
                    s.events.push_back(Event::LoadProgress { done: 0, total: 100 });
                    s.events.push_back(Event::LoadProgress { done: 100, total: 100 });
                    let info = model_info(&dir, s.ctx_len, opts);
                    s.events.push_back(Event::Loaded(info));
                }
            }
            Command::Generate { job, messages, params, cancel } => {
                // A rough token count: one per 3 characters plus the template's 8 per message.
                let prompt_tokens = messages.iter().map(|m| m.content.chars().count() / 3 + 8).sum::<usize>() + 3;
                s.requests.push(Request { job, messages, params });
                s.events.push_back(Event::Started { job, prompt_tokens });
                let pieces = s.reply.iter().cloned().collect();
                s.job = Some(Job { id: job, cancel, pieces, sent: 0, prompt_tokens });
            }
        }
    }

    fn poll(&mut self) -> Vec<Event> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Event> = s.events.drain(..).collect();
        let Some(mut job) = s.job.take() else { return out };
        let done = |job: &Job, stop: &str| Event::Done {
            job: job.id,
            stop: stop.into(),
            stats: ReplyStats {
                prompt_tokens: job.prompt_tokens,
                cached_tokens: 0,
                new_tokens: job.sent,
                ttft_secs: 0.05,
                tokens_per_sec: 42.0,
                ctx_used: job.prompt_tokens + job.sent,
            },
        };
        loop {
            if job.cancel.load(Ordering::Relaxed) {
                s.cancelled.push(job.id);
                out.push(done(&job, "cancelled"));
                return out;
            }
            if job.pieces.is_empty() {
                out.push(done(&job, "eos"));
                return out;
            }
            if s.budget == 0 {
                s.job = Some(job);
                return out;
            }
            if s.budget != usize::MAX {
                s.budget -= 1;
            }
            let text = job.pieces.pop_front().unwrap_or_default();
            job.sent += 1;
            out.push(Event::Token { job: job.id, text });
        }
    }
}
