//! `zhinao.Generator`: a causal LM (360Zhinao) with one session (its KV cache keeps the previous
//! sequence, so a chat's next turn prefills only what is new): `generate` (text, or a streaming
//! iterator of text pieces), `generate_ids`, `perplexity`, `tokenize`, `detokenize`.
//!
//! Streaming runs `engine::generate` on a worker thread that sends decoded pieces over a channel;
//! the iterator waits on it with the GIL released, and dropping (or `close()`-ing) the iterator
//! sets the generation's cancel flag, so the worker stops after its current token.
//!
//! No Rust lock is ever waited on with the GIL held: the iterator's receiver is taken with
//! `try_lock`, so a second thread iterating the same stream gets `ValueError: generator already
//! executing` (as a Python generator would) instead of blocking the GIL while the first thread,
//! waiting with the GIL released, needs it back (the deadlock of 0.5.0).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, TryLockError};

use numpy::PyArray1;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::{context, py_err};
use crate::engine::{self, GenOptions, Lm, LmOptions, Session, StopReason};
use crate::sampling::{Sampler, SamplingOverrides, SamplingParams};
use crate::tokenizer::{Message, SpecialMode, StreamDecoder};

/// What the streaming worker sends: text pieces, then the end (token ids and stop reason, or the
/// engine's error).
enum Piece {
    Text(String),
    Done(crate::Result<(Vec<u32>, StopReason)>),
}

/// A loaded causal LM and its session.
#[pyclass(module = "zhinao._zhinao", frozen)]
pub struct Generator {
    lm: Arc<Lm>,
    session: Arc<Mutex<Session>>,
}

/// One generation request, resolved against the model's defaults.
struct Request {
    prompt: Vec<u32>,
    params: SamplingParams,
    max_new: usize,
}

impl Generator {
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        prompt: &Bound<'_, PyAny>,
        chat: bool,
        system: Option<String>,
        max_new_tokens: Option<usize>,
        o: SamplingOverrides,
    ) -> PyResult<Request> {
        let lm = &self.lm;
        let max_new = max_new_tokens.unwrap_or(lm.default_max_new());
        if max_new == 0 {
            return Err(PyValueError::new_err("max_new_tokens must be at least 1"));
        }
        let prompt = if let Ok(s) = prompt.cast::<PyString>() {
            let text = s.to_cow()?;
            if chat {
                let mut msgs = Vec::new();
                if let Some(s) = &system {
                    msgs.push(Message::new("system", s));
                }
                msgs.push(Message::new("user", text.as_ref()));
                lm.chat_prompt(&msgs, max_new).map_err(py_err)?
            } else {
                lm.tokenizer.encode(&text, SpecialMode::All).map_err(py_err)?
            }
        } else {
            if chat {
                return Err(PyTypeError::new_err("chat=True needs the prompt as a str"));
            }
            prompt
                .extract::<Vec<u32>>()
                .map_err(|_| PyTypeError::new_err("prompt must be a str or a sequence of token ids (int)"))?
        };
        if prompt.is_empty() {
            return Err(PyValueError::new_err("the prompt has no tokens"));
        }
        let vocab = lm.model.cfg().vocab_size;
        if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(PyValueError::new_err(format!("token id {id} is outside the vocabulary of {vocab}")));
        }
        if prompt.len() > lm.ctx_len {
            return Err(py_err(crate::Error::ContextOverflow {
                tokens: prompt.len(),
                ctx: lm.ctx_len,
                hint: " (ctx_len when loading sets the context)".into(),
            }));
        }
        let params = SamplingParams::with_overrides(&lm.gen, &o);
        params.check().map_err(py_err)?;
        Ok(Request { prompt, params, max_new })
    }

    /// Run a request to the end on this thread (the GIL released by the caller).
    fn run(&self, r: &Request) -> crate::Result<engine::Generation> {
        let mut s = self.session.lock().map_err(|_| crate::Error::Device("session poisoned".into()))?;
        let opts = GenOptions { max_new: r.max_new, stop_ids: self.lm.stop_ids(), cancel: None };
        engine::generate(&mut s, &r.prompt, &opts, &mut Sampler::new(r.params.clone()), &mut |_| true)
    }
}

/// The keyword arguments every generation method takes, as `SamplingOverrides`.
fn overrides(
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: f32,
    frequency_penalty: f32,
    seed: u64,
) -> SamplingOverrides {
    SamplingOverrides {
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        presence_penalty: Some(presence_penalty),
        frequency_penalty: Some(frequency_penalty),
        seed: Some(seed),
    }
}

#[pymethods]
impl Generator {
    #[new]
    #[pyo3(signature = (model_dir, *, backend = None, device = None, ctx_len = None, chunk = 512, kv_type = "f16",
                        kv_sink = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        backend: Option<String>,
        device: Option<String>,
        ctx_len: Option<usize>,
        chunk: usize,
        kv_type: &str,
        kv_sink: Option<usize>,
    ) -> PyResult<Self> {
        let kv = engine::KvFormat::parse(kv_type).map_err(py_err)?;
        let opts = LmOptions { ctx_len, chunk, kv, kv_sink };
        let (lm, session) = py
            .detach(|| {
                // The config first: a missing directory or another model kind is named as such.
                crate::loader::ZhinaoConfig::load(&model_dir)?;
                let lm = Lm::load(context(backend, device)?, &model_dir, &opts, &mut |_, _| {})?;
                let session = lm.session()?;
                Ok((lm, session))
            })
            .map_err(py_err)?;
        Ok(Generator { lm: Arc::new(lm), session: Arc::new(Mutex::new(session)) })
    }

    /// A completion of `prompt` (a str, or a list of token ids). `chat=True` wraps a str prompt in
    /// the chat template (with `system`). Sampling defaults come from generation_config.json;
    /// `temperature=0` is greedy. `stream=True` returns an iterator of text pieces instead.
    #[pyo3(signature = (prompt, *, chat = false, system = None, max_new_tokens = None, temperature = None,
                        top_k = None, top_p = None, repetition_penalty = None, presence_penalty = 0.0,
                        frequency_penalty = 0.0, seed = 0, stream = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        chat: bool,
        system: Option<String>,
        max_new_tokens: Option<usize>,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: Option<f32>,
        repetition_penalty: Option<f32>,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: u64,
        stream: bool,
    ) -> PyResult<Py<PyAny>> {
        let o = overrides(temperature, top_k, top_p, repetition_penalty, presence_penalty, frequency_penalty, seed);
        let r = self.request(prompt, chat, system, max_new_tokens, o)?;
        if stream {
            return Ok(Py::new(py, self.stream(r))?.into_any());
        }
        let g = py.detach(|| self.run(&r)).map_err(py_err)?;
        let text = self.lm.tokenizer.decode(&g.output_ids, true);
        Ok(PyString::new(py, &text).into_any().unbind())
    }

    /// As `generate`, returning the new token ids (the stop id excluded).
    #[pyo3(signature = (prompt, *, chat = false, system = None, max_new_tokens = None, temperature = None,
                        top_k = None, top_p = None, repetition_penalty = None, presence_penalty = 0.0,
                        frequency_penalty = 0.0, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn generate_ids(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        chat: bool,
        system: Option<String>,
        max_new_tokens: Option<usize>,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: Option<f32>,
        repetition_penalty: Option<f32>,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: u64,
    ) -> PyResult<Vec<u32>> {
        let o = overrides(temperature, top_k, top_p, repetition_penalty, presence_penalty, frequency_penalty, seed);
        let r = self.request(prompt, chat, system, max_new_tokens, o)?;
        Ok(py.detach(|| self.run(&r)).map_err(py_err)?.output_ids)
    }

    /// Perplexity of each text (token windows of the context, as `zhinao perplexity`), as a
    /// float64 array [N].
    fn perplexity<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let texts = super::texts(texts, "texts")?;
        if texts.is_empty() {
            return Err(PyValueError::new_err("texts is empty: give at least one text"));
        }
        let lm = &self.lm;
        let ppl = py
            .detach(|| {
                let mut s = self.session.lock().map_err(|_| crate::Error::Device("session poisoned".into()))?;
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let ids = lm.tokenizer.encode(t, SpecialMode::All)?;
                        if ids.is_empty() {
                            return Err(crate::Error::Input(format!("texts[{i}] has no tokens")));
                        }
                        Ok(engine::perplexity(&mut s, &ids, 1)?.ppl)
                    })
                    .collect::<crate::Result<Vec<f64>>>()
            })
            .map_err(py_err)?;
        Ok(PyArray1::from_vec(py, ppl))
    }

    /// Token ids of `text` (special tokens such as `<|im_start|>` recognised).
    fn tokenize(&self, text: &str) -> PyResult<Vec<u32>> {
        self.lm.tokenizer.encode(text, SpecialMode::All).map_err(py_err)
    }

    /// The text of token ids (special tokens skipped).
    fn detokenize(&self, ids: Vec<u32>) -> String {
        self.lm.tokenizer.decode(&ids, true)
    }

    /// KV-cache positions of the session (the longest prompt plus output).
    #[getter]
    fn ctx_len(&self) -> usize {
        self.lm.ctx_len
    }
}

impl Generator {
    /// Start `r` on a worker thread; the iterator receives its pieces.
    fn stream(&self, r: Request) -> TokenStream {
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let (lm, session, flag) = (self.lm.clone(), self.session.clone(), cancel.clone());
        std::thread::spawn(move || {
            let result = (|| {
                let mut s = session.lock().map_err(|_| crate::Error::Device("session poisoned".into()))?;
                let mut dec = StreamDecoder::new(&lm.tokenizer, true);
                let opts = GenOptions { max_new: r.max_new, stop_ids: lm.stop_ids(), cancel: Some(&flag) };
                let g = engine::generate(&mut s, &r.prompt, &opts, &mut Sampler::new(r.params), &mut |id| {
                    let piece = dec.push(id);
                    // A closed receiver (the iterator is gone) stops generation.
                    piece.is_empty() || tx.send(Piece::Text(piece)).is_ok()
                })?;
                let tail = dec.finish();
                if !tail.is_empty() {
                    let _ = tx.send(Piece::Text(tail));
                }
                Ok((g.output_ids, g.stop_reason))
            })();
            let _ = tx.send(Piece::Done(result));
        });
        TokenStream { rx: Mutex::new(Some(rx)), cancel, done: Mutex::new(None) }
    }
}

/// The text pieces of a streamed generation, as they are produced. After the last piece,
/// `token_ids` and `stop_reason` tell what was generated and why it ended.
#[pyclass(module = "zhinao._zhinao", frozen)]
pub struct TokenStream {
    rx: Mutex<Option<Receiver<Piece>>>,
    cancel: Arc<AtomicBool>,
    done: Mutex<Option<(Vec<u32>, &'static str)>>,
}

#[pymethods]
impl TokenStream {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut rx = match self.rx.try_lock() {
            Ok(rx) => rx,
            // Another thread is inside `__next__` (waiting with the GIL released).
            Err(TryLockError::WouldBlock) => return Err(PyValueError::new_err("generator already executing")),
            Err(TryLockError::Poisoned(_)) => return Err(PyRuntimeError::new_err("stream poisoned")),
        };
        let Some(r) = rx.as_mut() else { return Ok(None) };
        // Wait for the worker with the GIL released.
        match py.detach(move || r.recv()) {
            Ok(Piece::Text(t)) => Ok(Some(t)),
            Ok(Piece::Done(result)) => {
                *rx = None;
                let (ids, reason) = result.map_err(py_err)?;
                // `done` is only ever locked with the GIL held, so this never waits.
                if let Ok(mut d) = self.done.lock() {
                    *d = Some((ids, reason.as_str()));
                }
                Ok(None)
            }
            Err(_) => {
                *rx = None;
                Err(PyRuntimeError::new_err("the generation worker ended without a result"))
            }
        }
    }

    /// Stop the generation (after its current token); the iterator then ends.
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The generated token ids (the stop id excluded), once the iterator is exhausted; else None.
    #[getter]
    fn token_ids(&self) -> Option<Vec<u32>> {
        self.done.lock().ok().and_then(|d| d.as_ref().map(|(ids, _)| ids.clone()))
    }

    /// `"eos"`, `"length"`, `"context"` or `"cancelled"` once the iterator is exhausted; else None.
    #[getter]
    fn stop_reason(&self) -> Option<&'static str> {
        self.done.lock().ok().and_then(|d| d.as_ref().map(|(_, r)| *r))
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
