//! Server-sent events for streamed completions, framed by hand so every byte is ours:
//! `data: {json}\n\n` per chunk, `: keep-alive\n\n` comments while waiting, and `data: [DONE]\n\n` last.
//! A chat stream opens with the assistant role; with `stream_options.include_usage` every chunk has
//! `"usage": null` and one extra chunk with `choices: []` carries the totals before `[DONE]`. A failure
//! ends the stream with one `data: {"error": {...}}` event and `[DONE]`.
//!
//! The stream owns the job's [`JobGuard`]: when the client goes away hyper drops the body, the guard
//! goes with it, and the engine stops within one step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use tokio::sync::mpsc;

use super::api::{ChatChunk, ChatChunkChoice, CompletionChoice, CompletionResponse, Delta, Usage};
use super::error::ApiError;
use super::scheduler::{Finish, GenEvent, JobGuard};
use super::TokenCount;

/// Which OpenAI object the chunks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `chat.completion.chunk` with `delta`.
    Chat,
    /// `text_completion` with `text`.
    Completion,
}

/// What every chunk of one response repeats.
#[derive(Clone, Debug)]
pub struct StreamMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub format: Format,
    pub include_usage: bool,
}

impl StreamMeta {
    fn usage_field(&self, u: Option<Usage>) -> Option<Option<Usage>> {
        self.include_usage.then_some(u)
    }

    /// A chunk with `text` (chat: as `delta.content`, or the role when `role`) and `finish`.
    fn chunk(&self, text: Option<String>, role: bool, finish: Option<Finish>) -> Bytes {
        let finish_reason = finish.map(|f| f.as_str());
        match self.format {
            Format::Chat => frame(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: Delta { role: role.then_some("assistant"), content: text },
                    logprobs: None,
                    finish_reason,
                }],
                usage: self.usage_field(None),
            }),
            Format::Completion => frame(&CompletionResponse {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    text: text.unwrap_or_default(),
                    index: 0,
                    logprobs: None,
                    finish_reason,
                }],
                usage: self.usage_field(None),
            }),
        }
    }

    /// The `choices: []` chunk with the totals.
    fn usage_chunk(&self, usage: Usage) -> Bytes {
        match self.format {
            Format::Chat => frame(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
            Format::Completion => frame(&CompletionResponse {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
        }
    }
}

/// `data: {json}\n\n`.
pub fn frame<T: Serialize>(v: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serialising our own types cannot fail; an empty object keeps the framing if it ever did.
    serde_json::to_writer(&mut out, v).unwrap_or_else(|_| out.extend_from_slice(b"{}"));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

const DONE: &[u8] = b"data: [DONE]\n\n";
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

struct SseState {
    rx: mpsc::UnboundedReceiver<GenEvent>,
    _guard: JobGuard,
    meta: StreamMeta,
    pending: VecDeque<Bytes>,
    finished: bool,
    keep_alive: Duration,
    tokens: Arc<TokenCount>,
}

impl SseState {
    fn on_event(&mut self, ev: Option<GenEvent>) {
        match ev {
            Some(GenEvent::Delta(t)) => {
                let c = self.meta.chunk(Some(t), false, None);
                self.pending.push_back(c);
            }
            Some(GenEvent::Done { finish, usage }) => {
                let text = (self.meta.format == Format::Completion).then(String::new);
                let last = self.meta.chunk(text, false, Some(finish));
                self.pending.push_back(last);
                if self.meta.include_usage {
                    let u = self.meta.usage_chunk(usage);
                    self.pending.push_back(u);
                }
                self.tokens.set(usage.prompt_tokens, usage.completion_tokens);
                self.end();
            }
            Some(GenEvent::Error(e)) => self.fail(e),
            None => self.fail(ApiError::internal("the engine stopped before the generation finished")),
        }
    }
    fn fail(&mut self, e: ApiError) {
        self.pending.push_back(frame(&e.body()));
        self.end();
    }
    fn end(&mut self) {
        self.pending.push_back(Bytes::from_static(DONE));
        self.finished = true;
    }
}

/// The streamed response for a queued generation.
pub fn response(
    meta: StreamMeta,
    rx: mpsc::UnboundedReceiver<GenEvent>,
    guard: JobGuard,
    keep_alive: Duration,
    tokens: Arc<TokenCount>,
) -> Response {
    let mut pending = VecDeque::new();
    if meta.format == Format::Chat {
        pending.push_back(meta.chunk(Some(String::new()), true, None));
    }
    let st = SseState { rx, _guard: guard, meta, pending, finished: false, keep_alive, tokens };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<Bytes, Infallible>(b), st));
            }
            if st.finished {
                return None;
            }
            match tokio::time::timeout(st.keep_alive, st.rx.recv()).await {
                Err(_) => return Some((Ok(Bytes::from_static(KEEP_ALIVE)), st)),
                Ok(ev) => st.on_event(ev),
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
