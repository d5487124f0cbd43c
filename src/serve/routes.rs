//! The handlers. Each one parses its body, resolves the model, validates, tokenises on a blocking
//! thread (a 10,000-message history or a megabyte of `/tokenize` pieces must not stall the runtime),
//! queues one job, and answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::api::*;
use super::backend::{GenJob, ModelCard, ModelKind, Sampling, Turn};
use super::error::{parse_json, ApiError, ApiResult};
use super::http::{unix_now, App};
use super::scheduler::GenEvent;
use super::sse::{self, Format, StreamMeta};
use super::TokenCount;

type Body = Result<Bytes, BytesRejection>;

/// The raw body, or 413 / 400 as JSON.
fn body_bytes(app: &App, body: Body) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body exceeds the limit of {} bytes", app.cfg.body_limit),
            )
            .code("request_too_large")
        } else {
            ApiError::bad_request(format!("reading the request body: {}", r.body_text()))
        }
    })
}

/// Run CPU work (tokenising, templating) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ApiError::internal("a tokenizer task failed"))?
}

/// Sets its flag when dropped: held by a handler across blocking work, it tells that work the
/// request is gone (the client disconnected and hyper dropped the handler).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Response header naming how many history messages were left out of the prompt.
const TRUNCATED_HEADER: &str = "x-zhinao-truncated-messages";

/// The prompt-cache tenant of a request: a SHA-256 of the API key it presents (`Authorization:
/// Bearer`, any case, or `X-Api-Key`) and its `cache_salt`; `None` with neither. Only the digest is
/// kept, never the key.
fn tenant(headers: &HeaderMap, salt: Option<&str>) -> Option<[u8; 32]> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim));
    let key = key.filter(|k| !k.is_empty());
    let salt = salt.filter(|s| !s.is_empty());
    if key.is_none() && salt.is_none() {
        return None;
    }
    let mut h = Sha256::new();
    for part in [key, salt] {
        match part {
            Some(p) => {
                h.update([1u8]);
                h.update((p.len() as u64).to_le_bytes());
                h.update(p.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    Some(h.finalize().into())
}

/// Tokens the chat history must leave free for the completion ([`crate::tokenizer::history_reserve`]
/// of what the request asks for, or the default, within `--max-tokens`); the completion then gets all
/// the room left, up to `max_tokens`.
fn history_reserve(app: &App, card: &ModelCard, max_tokens: Option<usize>) -> usize {
    let wanted = max_tokens.unwrap_or(card.default_max_tokens).min(app.cfg.max_tokens.unwrap_or(usize::MAX));
    crate::tokenizer::history_reserve(wanted, card.n_ctx)
}

// ---- health, models, metrics --------------------------------------------------------------------

pub async fn health(State(app): State<Arc<App>>) -> Response {
    match app.health() {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn models(State(app): State<Arc<App>>) -> Json<ModelList> {
    let data = match app.ready() {
        Ok(r) => r
            .cards
            .iter()
            .map(|c| ModelObject {
                id: c.id.clone(),
                object: "model",
                created: app.started,
                owned_by: "zhinao",
                kind: c.kind.as_str(),
                n_ctx: c.n_ctx,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    Json(ModelList { object: "list", data })
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response()
}

// ---- chat and text completions ------------------------------------------------------------------

/// The validated sampling and length fields.
struct GenParams {
    sampling: Sampling,
    max_tokens: Option<usize>,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn in_range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> ApiResult<Option<f32>> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(ApiError::invalid_param(param, format!("`{param}` must be between {lo} and {hi}, got {x}")))
        }
        v => Ok(v.map(|x| x as f32)),
    }
}

fn gen_params(f: &SamplingFields) -> ApiResult<GenParams> {
    if let Some(n) = f.n {
        if n != 1 {
            return Err(ApiError::unsupported("n", "n other than 1"));
        }
    }
    if f.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::unsupported("logit_bias", "logit_bias"));
    }
    let max_tokens = match (f.max_completion_tokens, f.max_tokens) {
        (Some(0), _) => return Err(ApiError::invalid_param("max_completion_tokens", "must be at least 1")),
        (None, Some(0)) => return Err(ApiError::invalid_param("max_tokens", "must be at least 1")),
        (Some(n), _) | (None, Some(n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        (None, None) => None,
    };
    let top_k = match f.top_k {
        Some(k) if k < -1 => return Err(ApiError::invalid_param("top_k", "`top_k` must be -1, 0 (off) or positive")),
        Some(k) => Some(usize::try_from(k.max(0)).unwrap_or(usize::MAX)),
        None => None,
    };
    let repetition_penalty = in_range("repetition_penalty", f.repetition_penalty, 0.0, 100.0)?;
    if repetition_penalty == Some(0.0) {
        return Err(ApiError::invalid_param("repetition_penalty", "`repetition_penalty` must be positive"));
    }
    let stops = match &f.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > 16 || stops.iter().any(|s| s.len() > 1024) {
        return Err(ApiError::invalid_param("stop", "at most 16 stop strings of at most 1024 bytes"));
    }
    // Below 1e-6 the logits divided by the temperature overflow f32: that is greedy decoding.
    let temperature = in_range("temperature", f.temperature, 0.0, 2.0)?.map(|t| if t < 1e-6 { 0.0 } else { t });
    Ok(GenParams {
        sampling: Sampling {
            temperature,
            top_p: in_range("top_p", f.top_p, 0.0, 1.0)?,
            top_k,
            repetition_penalty,
            presence_penalty: in_range("presence_penalty", f.presence_penalty, -2.0, 2.0)?,
            frequency_penalty: in_range("frequency_penalty", f.frequency_penalty, -2.0, 2.0)?,
            seed: f.seed.map(|s| s as u64),
        },
        max_tokens,
        stops,
        stream: f.stream.unwrap_or(false),
        include_usage: f.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
    })
}

/// The text of a message's content (text parts joined).
fn content_text(i: usize, c: &Option<Content>) -> ApiResult<String> {
    let param = format!("messages[{i}].content");
    match c {
        None => Err(ApiError::invalid_param(&param, format!("`{param}` is missing"))),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    (kind, _) => return Err(ApiError::unsupported(&param, &format!("content of type '{kind}'"))),
                }
            }
            Ok(s)
        }
    }
}

fn turns(messages: &[ChatMessage]) -> ApiResult<Vec<Turn>> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "`messages` must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!("role '{other}' is not supported (system, user, assistant)"),
                    ))
                }
            };
            if m.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
                return Err(ApiError::unsupported(&format!("messages[{i}].tool_calls"), "tool calls"));
            }
            Ok(Turn { role: role.to_string(), content: content_text(i, &m.content)? })
        })
        .collect()
}

/// The prompt of a generation and what `chat` and `completions` learned building it.
struct GenPrompt {
    ids: Vec<u32>,
    /// History messages left out (chat).
    dropped_messages: usize,
    tenant: Option<[u8; 32]>,
}

/// What `chat` and `completions` share once the prompt ids exist.
async fn run_generation(
    app: Arc<App>,
    tokens: Arc<TokenCount>,
    card: super::ModelCard,
    prompt: GenPrompt,
    p: GenParams,
    format: Format,
    prompt_param: &str,
) -> ApiResult<Response> {
    let dropped_messages = prompt.dropped_messages;
    let mut resp = generation_response(app, tokens, card, prompt, p, format, prompt_param).await?;
    if dropped_messages > 0 {
        resp.headers_mut().insert(HeaderName::from_static(TRUNCATED_HEADER), HeaderValue::from(dropped_messages));
    }
    Ok(resp)
}

/// The answer of a generation (JSON or a stream); [`run_generation`] adds the headers.
async fn generation_response(
    app: Arc<App>,
    tokens: Arc<TokenCount>,
    card: super::ModelCard,
    prompt: GenPrompt,
    p: GenParams,
    format: Format,
    prompt_param: &str,
) -> ApiResult<Response> {
    let GenPrompt { ids: prompt, dropped_messages, tenant } = prompt;
    if prompt.is_empty() {
        return Err(ApiError::invalid_param(prompt_param, "the prompt is empty"));
    }
    if prompt.len() >= card.n_ctx {
        return Err(ApiError::context_overflow(prompt.len(), card.n_ctx, prompt_param));
    }
    let room = card.n_ctx - prompt.len();
    // `--max-tokens` clamps (as llama-server's `--n-predict` does): the answer ends with
    // finish_reason "length", which every client handles, where a 400 would break those that send a
    // large default.
    let cap = app.cfg.max_tokens.unwrap_or(usize::MAX).max(1);
    let max_tokens = p.max_tokens.unwrap_or(card.default_max_tokens).min(cap).clamp(1, room);
    let n_prompt = prompt.len();
    let job = GenJob { model: card.id.clone(), prompt, max_tokens, sampling: p.sampling, tenant };
    let (guard, mut rx) = app.sched.generate(job, p.stops)?;
    tokens.set(n_prompt, 0);
    let (prefix, object) = match format {
        Format::Chat => ("chatcmpl", "chat.completion"),
        Format::Completion => ("cmpl", "text_completion"),
    };
    let id = app.new_id(prefix);
    let created = unix_now();
    if p.stream {
        let meta = StreamMeta { id, created, model: card.id, format, include_usage: p.include_usage };
        return Ok(sse::response(meta, rx, guard, app.cfg.keep_alive, tokens));
    }
    let mut text = String::new();
    let (finish, usage) = loop {
        match rx.recv().await {
            Some(GenEvent::Delta(t)) => text.push_str(&t),
            Some(GenEvent::Done { finish, usage }) => break (finish, usage),
            Some(GenEvent::Error(e)) => return Err(e),
            None => return Err(ApiError::internal("the engine stopped before the generation finished")),
        }
    };
    drop(guard);
    tokens.set(usage.prompt_tokens, usage.completion_tokens);
    let finish_reason = finish.as_str();
    Ok(match format {
        Format::Chat => Json(ChatResponse {
            id,
            object,
            created,
            model: card.id,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: text },
                logprobs: None,
                finish_reason,
            }],
            usage,
            truncated_messages: (dropped_messages > 0).then_some(dropped_messages),
        })
        .into_response(),
        Format::Completion => Json(CompletionResponse {
            id,
            object,
            created,
            model: card.id,
            choices: vec![CompletionChoice { text, index: 0, logprobs: None, finish_reason: Some(finish_reason) }],
            usage: Some(Some(usage)),
        })
        .into_response(),
    })
}

pub async fn chat(
    State(app): State<Arc<App>>,
    Extension(tokens): Extension<Arc<TokenCount>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    chat_inner(app, tokens, headers, body).await.unwrap_or_else(|e| e.into_response())
}

async fn chat_inner(app: Arc<App>, tokens: Arc<TokenCount>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let req: ChatRequest = parse_json(&body_bytes(&app, body)?)?;
    let p = gen_params(&req.sampling)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) || req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::unsupported("tools", "tool calling"));
    }
    if req.tool_choice.as_ref().is_some_and(|t| !t.is_null() && t != "none")
        || req.function_call.as_ref().is_some_and(|t| !t.is_null() && t != "none")
    {
        return Err(ApiError::unsupported("tool_choice", "tool calling"));
    }
    if let Some(f) = &req.response_format {
        if f.kind != "text" {
            return Err(ApiError::unsupported("response_format", &format!("response_format '{}'", f.kind)));
        }
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(ApiError::unsupported("logprobs", "logprobs"));
    }
    let messages = req.messages;
    let (catalog, card) = app.model(req.model.as_deref(), ModelKind::Chat)?;
    let reserve = history_reserve(&app, &card, p.max_tokens);
    let id = card.id.clone();
    let prompt = blocking(move || {
        let turns = turns(&messages)?;
        catalog.chat_prompt(&id, &turns, reserve).map_err(|e| ApiError::from(e).param("messages"))
    })
    .await?;
    let tenant = tenant(&headers, req.cache_salt.as_deref());
    let prompt = GenPrompt { ids: prompt.ids, dropped_messages: prompt.dropped_messages, tenant };
    run_generation(app, tokens, card, prompt, p, Format::Chat, "messages").await
}

pub async fn completions(
    State(app): State<Arc<App>>,
    Extension(tokens): Extension<Arc<TokenCount>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    completions_inner(app, tokens, headers, body).await.unwrap_or_else(|e| e.into_response())
}

async fn completions_inner(
    app: Arc<App>,
    tokens: Arc<TokenCount>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: CompletionRequest = parse_json(&body_bytes(&app, body)?)?;
    let p = gen_params(&req.sampling)?;
    if req.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "echo"));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "suffix"));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::unsupported("best_of", "best_of other than 1"));
    }
    if req.logprobs.is_some() {
        return Err(ApiError::unsupported("logprobs", "logprobs"));
    }
    let (catalog, card) = app.model(req.model.as_deref(), ModelKind::Chat)?;
    let one = |n: usize| -> ApiResult<()> {
        match n {
            0 => Err(ApiError::invalid_param("prompt", "the prompt is empty")),
            1 => Ok(()),
            _ => Err(ApiError::unsupported("prompt", "a list of several prompts")),
        }
    };
    let prompt = match req.prompt {
        Prompt::Text(s) => {
            let id = card.id.clone();
            blocking(move || catalog.tokenize(&id, &s, true).map_err(|e| ApiError::from(e).param("prompt"))).await?
        }
        Prompt::Texts(v) => {
            one(v.len())?;
            let (id, s) = (card.id.clone(), v.into_iter().next().unwrap_or_default());
            blocking(move || catalog.tokenize(&id, &s, true).map_err(|e| ApiError::from(e).param("prompt"))).await?
        }
        Prompt::Ids(ids) => ids,
        Prompt::IdLists(v) => {
            one(v.len())?;
            v.into_iter().next().unwrap_or_default()
        }
    };
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= card.vocab_size) {
        return Err(ApiError::invalid_param("prompt", format!("token id {bad} is outside the vocabulary")));
    }
    let prompt = GenPrompt { ids: prompt, dropped_messages: 0, tenant: tenant(&headers, req.cache_salt.as_deref()) };
    run_generation(app, tokens, card, prompt, p, Format::Completion, "prompt").await
}

// ---- embeddings, rerank, tokenize ---------------------------------------------------------------

/// Most inputs in one embeddings request, most documents in one rerank request.
const MAX_INPUTS: usize = 2048;

/// Most bytes one rerank request may have tokenized ([`crate::tokenizer::RerankPrompt::work`]);
/// more is 413.
const MAX_RERANK_WORK: usize = 8 << 20;

/// Most tokens `/tokenize` returns with `with_pieces` (each becomes a JSON object); more is 400.
pub const MAX_PIECES: usize = 65_536;

/// One embeddings input before tokenising.
enum Item {
    Text(String),
    Ids(Vec<u32>),
}

pub async fn embeddings(
    State(app): State<Arc<App>>,
    Extension(tokens): Extension<Arc<TokenCount>>,
    body: Body,
) -> Response {
    embeddings_inner(app, tokens, body).await.unwrap_or_else(|e| e.into_response())
}

async fn embeddings_inner(app: Arc<App>, tokens: Arc<TokenCount>, body: Body) -> ApiResult<Response> {
    let req: EmbeddingRequest = parse_json(&body_bytes(&app, body)?)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param("encoding_format", format!("'{other}': expected float or base64")))
        }
    };
    if req.dimensions.is_some() {
        return Err(ApiError::unsupported("dimensions", "dimensions"));
    }
    let (catalog, card) = app.model(req.model.as_deref(), ModelKind::Embedding)?;
    let items: Vec<Item> = match req.input {
        EmbeddingInput::Text(s) => vec![Item::Text(s)],
        EmbeddingInput::Texts(v) => v.into_iter().map(Item::Text).collect(),
        EmbeddingInput::Ids(ids) => vec![Item::Ids(ids)],
        EmbeddingInput::IdLists(v) => v.into_iter().map(Item::Ids).collect(),
    };
    let is_empty = |i: &Item| match i {
        Item::Text(s) => s.is_empty(),
        Item::Ids(v) => v.is_empty(),
    };
    if items.is_empty() || items.iter().any(is_empty) {
        return Err(ApiError::invalid_param("input", "`input` must not be empty (nor contain an empty item)"));
    }
    if items.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param("input", format!("at most {MAX_INPUTS} inputs per request")));
    }
    let c = card.clone();
    let seqs: Vec<Vec<u32>> = blocking(move || {
        items
            .into_iter()
            .map(|item| match item {
                Item::Ids(ids) => {
                    if ids.len() > c.n_ctx {
                        let msg = format!(
                            "a token list of {} ids is longer than the model's {} positions",
                            ids.len(),
                            c.n_ctx
                        );
                        return Err(ApiError::invalid_param("input", msg));
                    }
                    if let Some(bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
                        return Err(ApiError::invalid_param(
                            "input",
                            format!("token id {bad} is outside the vocabulary"),
                        ));
                    }
                    Ok(ids)
                }
                Item::Text(text) => catalog.tokenize(&c.id, &text, true).map_err(|e| ApiError::from(e).param("input")),
            })
            .collect()
    })
    .await?;
    let n_tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let (guard, rx) = app.sched.embed(card.id.clone(), seqs)?;
    let vecs = rx.await.map_err(|_| ApiError::internal("the engine dropped the request"))??;
    drop(guard);
    tokens.set(n_tokens, 0);
    let data = vecs
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingObject {
            object: "embedding",
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(v)
            },
            index,
        })
        .collect();
    let usage = EmbeddingUsage { prompt_tokens: n_tokens, total_tokens: n_tokens };
    Ok(Json(EmbeddingResponse { object: "list", data, model: card.id, usage }).into_response())
}

pub async fn rerank(
    State(app): State<Arc<App>>,
    Extension(tokens): Extension<Arc<TokenCount>>,
    body: Body,
) -> Response {
    rerank_inner(app, tokens, body).await.unwrap_or_else(|e| e.into_response())
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-(x as f64)).exp())
}

async fn rerank_inner(app: Arc<App>, tokens: Arc<TokenCount>, body: Body) -> ApiResult<Response> {
    let req: RerankRequest = parse_json(&body_bytes(&app, body)?)?;
    let (docs, tei) = match (req.documents, req.texts) {
        (Some(d), None) => (
            d.into_iter()
                .map(|d| match d {
                    RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
                })
                .collect::<Vec<_>>(),
            false,
        ),
        (None, Some(t)) => (t, true),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param("documents", "give `documents` or `texts`, not both"))
        }
        (None, None) => return Err(ApiError::invalid_param("documents", "`documents` (or TEI's `texts`) is required")),
    };
    let param = if tei { "texts" } else { "documents" };
    if docs.is_empty() {
        return Err(ApiError::invalid_param(param, format!("`{param}` must not be empty")));
    }
    if docs.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param(param, format!("at most {MAX_INPUTS} documents per request")));
    }
    if req.query.is_empty() {
        return Err(ApiError::invalid_param("query", "`query` must not be empty"));
    }
    let work = crate::tokenizer::RerankPrompt::work(&req.query, &docs);
    if work > MAX_RERANK_WORK {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "tokenizing this request would read {work} bytes (the query once, each document once, and the \
                 query again for each document that begins with whitespace); the limit is {MAX_RERANK_WORK}"
            ),
        )
        .code("request_too_large"));
    }
    let (catalog, card) = app.model(req.model.as_deref(), ModelKind::Rerank)?;
    let (id, query, d) = (card.id.clone(), req.query.clone(), docs.clone());
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancel.clone());
    let pairs =
        blocking(move || catalog.rerank_pairs(&id, &query, &d, &cancel).map_err(|e| ApiError::from(e).param(param)))
            .await?;
    let n_tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
    let (guard, rx) = app.sched.rerank(card.id.clone(), pairs)?;
    let raw = rx.await.map_err(|_| ApiError::internal("the engine dropped the request"))??;
    drop(guard);
    tokens.set(n_tokens, 0);
    let raw_scores = req.raw_scores.unwrap_or(false);
    let score = |i: usize| if raw_scores { raw[i] as f64 } else { sigmoid(raw[i]) };
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
    if let Some(n) = req.top_n {
        order.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if tei {
        let with_text = req.return_text.unwrap_or(false);
        let out: Vec<TeiRank> = order
            .iter()
            .map(|&i| TeiRank { index: i, score: score(i), text: with_text.then(|| docs[i].clone()) })
            .collect();
        return Ok(Json(out).into_response());
    }
    let with_docs = req.return_documents.unwrap_or(false);
    let results = order
        .iter()
        .map(|&i| RerankResult {
            index: i,
            relevance_score: score(i),
            document: with_docs.then(|| RerankDocumentOut { text: docs[i].clone() }),
        })
        .collect();
    let usage = EmbeddingUsage { prompt_tokens: n_tokens, total_tokens: n_tokens };
    Ok(Json(RerankResponse { id: app.new_id("rerank"), object: "list", model: card.id, results, usage })
        .into_response())
}

/// The model for `/tokenize` and `/detokenize`: the one named, else the chat model, else the only one.
fn any_model(app: &App, requested: Option<&str>) -> ApiResult<(Arc<dyn super::Catalog>, super::ModelCard)> {
    let r = app.ready()?;
    if let Some(m) = requested.filter(|m| !m.is_empty()) {
        let kind = r.cards.iter().find(|c| c.id == m).map_or(ModelKind::Chat, |c| c.kind);
        return app.model(Some(m), kind);
    }
    let kind = match r.cards.iter().find(|c| c.kind == ModelKind::Chat) {
        Some(_) => ModelKind::Chat,
        None if r.cards.len() == 1 => r.cards[0].kind,
        None => return Err(ApiError::invalid_param("model", "`model` is required when no chat model is loaded")),
    };
    app.model(None, kind)
}

pub async fn tokenize(State(app): State<Arc<App>>, body: Body) -> Response {
    tokenize_inner(app, body).await.unwrap_or_else(|e| e.into_response())
}

async fn tokenize_inner(app: Arc<App>, body: Body) -> ApiResult<Response> {
    let req: TokenizeRequest = parse_json(&body_bytes(&app, body)?)?;
    let (catalog, card) = any_model(&app, req.model.as_deref())?;
    let special = req.parse_special.or(req.add_special_tokens).unwrap_or(true);
    let with_pieces = req.with_pieces.unwrap_or(false);
    let text = match (req.content.or(req.prompt), req.messages) {
        (Some(text), None) => Ok(text),
        (None, Some(messages)) => {
            if card.kind != ModelKind::Chat {
                return Err(ApiError::invalid_param("messages", "`messages` needs a chat model"));
            }
            Err(messages)
        }
        _ => return Err(ApiError::invalid_param("content", "give one of `content`, `prompt` or `messages`")),
    };
    // The chat route's budget with no `max_tokens`: the same prompt a chat request would get.
    let reserve = history_reserve(&app, &card, None);
    // Tokenising, templating and the pieces (megabytes of JSON for a long text) all run here.
    let body = blocking(move || {
        let (ids, dropped) = match text {
            Ok(text) => (catalog.tokenize(&card.id, &text, special).map_err(ApiError::from)?, 0),
            Err(messages) => {
                let turns = turns(&messages)?;
                let p =
                    catalog.chat_prompt(&card.id, &turns, reserve).map_err(|e| ApiError::from(e).param("messages"))?;
                (p.ids, p.dropped_messages)
            }
        };
        let tokens = if with_pieces {
            if ids.len() > MAX_PIECES {
                return Err(ApiError::invalid_param(
                    "with_pieces",
                    format!(
                        "`with_pieces` answers at most {MAX_PIECES} tokens; this text has {} (ask without pieces, \
                         or in parts)",
                        ids.len()
                    ),
                ));
            }
            ids.iter()
                .map(|&t| {
                    let bytes = catalog.token_bytes(&card.id, t).unwrap_or_default();
                    let piece = match String::from_utf8(bytes) {
                        Ok(s) => json!(s),
                        Err(e) => json!(e.into_bytes()),
                    };
                    json!({ "id": t, "piece": piece })
                })
                .collect()
        } else {
            ids.iter().map(|&t| json!(t)).collect::<Vec<_>>()
        };
        let mut v = json!({ "tokens": tokens, "count": ids.len(), "max_model_len": card.n_ctx, "model": card.id });
        if dropped > 0 {
            v["truncated_messages"] = json!(dropped);
        }
        serde_json::to_vec(&v).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn detokenize(State(app): State<Arc<App>>, body: Body) -> Response {
    detokenize_inner(app, body).await.unwrap_or_else(|e| e.into_response())
}

async fn detokenize_inner(app: Arc<App>, body: Body) -> ApiResult<Response> {
    let req: DetokenizeRequest = parse_json(&body_bytes(&app, body)?)?;
    let (catalog, card) = any_model(&app, req.model.as_deref())?;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= card.vocab_size) {
        return Err(ApiError::invalid_param("tokens", format!("token id {bad} is outside the vocabulary")));
    }
    let id = card.id.clone();
    let text = blocking(move || catalog.detokenize(&id, &req.tokens).map_err(ApiError::from)).await?;
    Ok(Json(json!({ "content": text, "model": card.id })).into_response())
}
