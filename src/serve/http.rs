//! The router, the shared state and the one middleware every request passes (`Host` check, auth,
//! content type, the body read under its timeout, admission, log line, metrics, JSON errors).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::backend::{Catalog, Loader, ModelCard, ModelKind};
use super::error::{ApiError, ApiResult};
use super::metrics::Metrics;
use super::scheduler::Scheduler;
use super::{routes, ServeConfig, TokenCount};

/// The loaded models.
pub struct Ready {
    pub catalog: Arc<dyn Catalog>,
    pub cards: Vec<ModelCard>,
}

/// Shared by every handler.
pub struct App {
    pub cfg: ServeConfig,
    pub sched: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
    ready: OnceLock<Ready>,
    failed: OnceLock<String>,
    admit: Arc<Semaphore>,
    next_id: AtomicU64,
    pub started: u64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl App {
    pub fn new(mut cfg: ServeConfig) -> Arc<App> {
        // Compared with the given key, which is trimmed too.
        cfg.api_key = cfg.api_key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
        let metrics = Arc::new(Metrics::default());
        let sched = Scheduler::new(cfg.max_queue, cfg.batch_tokens, metrics.clone());
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Arc::new(App {
            admit: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            cfg,
            sched,
            metrics,
            ready: OnceLock::new(),
            failed: OnceLock::new(),
            next_id: AtomicU64::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16),
            started: unix_now(),
        })
    }

    /// Start the engine thread with `loader` (what [`super::serve`] does; tests that drive [`router`]
    /// without a listener call it directly). `/health` answers 200 once `on_ready` has run.
    pub fn start(
        self: &Arc<Self>,
        loader: Loader,
        on_ready: impl FnOnce(&[ModelCard]) + Send + 'static,
        on_fail: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let (ready, failed) = (self.clone(), self.clone());
        self.sched.start(
            loader,
            Box::new(move |catalog| {
                let cards = ready.set_ready(catalog);
                on_ready(&cards);
            }),
            Box::new(move |e| {
                failed.set_failed(e.clone());
                on_fail(e);
            }),
        )
    }

    /// Record the loaded models; returns their cards.
    pub fn set_ready(&self, catalog: Arc<dyn Catalog>) -> Vec<ModelCard> {
        let cards = catalog.models();
        let _ = self.ready.set(Ready { catalog, cards: cards.clone() });
        cards
    }

    pub fn set_failed(&self, e: String) {
        let _ = self.failed.set(e);
    }

    /// The loaded models, or 503 while loading (or after a failed load).
    pub fn ready(&self) -> ApiResult<&Ready> {
        match (self.ready.get(), self.failed.get()) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => {
                Err(ApiError::unavailable(format!("the models failed to load: {}", super::error::redact_paths(e))))
            }
            (None, None) => Err(ApiError::unavailable("Loading model")),
        }
    }

    /// What `/health` answers: the models loaded and the engine thread alive and not stuck in one
    /// step for longer than `stall_timeout`; else 503 with the reason.
    pub fn health(&self) -> ApiResult<&Ready> {
        let ready = self.ready()?;
        self.sched.heartbeat.check(self.cfg.stall_timeout).map_err(ApiError::unavailable)?;
        Ok(ready)
    }

    /// A fresh response id: `prefix-` and 24 hex digits.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:024x}", (n as u128).wrapping_mul(0x2545_f491_4f6c_dd1d_u128) & ((1u128 << 96) - 1))
    }

    /// The model a request names, which must serve `kind`; with no name, the only model of that kind.
    pub fn model(&self, requested: Option<&str>, kind: ModelKind) -> ApiResult<(Arc<dyn Catalog>, ModelCard)> {
        let r = self.ready()?;
        let of_kind: Vec<&ModelCard> = r.cards.iter().filter(|c| c.kind == kind).collect();
        let ids = || r.cards.iter().map(|c| format!("{} ({})", c.id, c.kind.as_str())).collect::<Vec<_>>().join(", ");
        let card = match requested.filter(|m| !m.is_empty()) {
            Some(m) => match r.cards.iter().find(|c| c.id == m) {
                Some(c) if c.kind == kind => c,
                Some(c) => {
                    return Err(ApiError::invalid_param(
                        "model",
                        format!("model '{m}' is a {} model and cannot serve this endpoint", c.kind.as_str()),
                    )
                    .code("model_not_supported"))
                }
                None => {
                    return Err(ApiError::invalid_param(
                        "model",
                        format!("model '{m}' is not loaded; loaded models: {}", ids()),
                    )
                    .code("model_not_found"))
                }
            },
            None => match of_kind.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ApiError::invalid_param(
                        "model",
                        format!("no {} model is loaded; loaded models: {}", kind.as_str(), ids()),
                    )
                    .code("model_not_found"))
                }
                _ => return Err(ApiError::invalid_param("model", format!("`model` is required: {}", ids()))),
            },
        };
        Ok((r.catalog.clone(), card.clone()))
    }
}

/// Every route, the body limit, the middleware, panics as JSON 500, and CORS when configured.
pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/health", get(routes::health))
        .route("/v1/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/models", get(routes::models))
        .route("/metrics", get(routes::metrics))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/rerank", post(routes::rerank))
        .route("/rerank", post(routes::rerank))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(app.cfg.body_limit))
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("internal error (a bug: the handler panicked)").into_response()
        }))
        .with_state(app.clone());
    if !app.cfg.cors_origins.is_empty() {
        let origins = &app.cfg.cors_origins;
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        r = r.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("x-api-key")]),
        );
    }
    r
}

/// Routes anyone may call.
fn is_public(route: &str) -> bool {
    matches!(route, "/health" | "/v1/health" | "/v1/models" | "/models")
}

/// Routes that count against `max_concurrent`.
fn is_admitted(route: &str) -> bool {
    route.starts_with("/v1/") && !is_public(route) || matches!(route, "/rerank" | "/tokenize" | "/detokenize")
}

fn key_ok(headers: &HeaderMap, key: &str) -> bool {
    // `Authorization: <scheme> <token>`, the scheme case-insensitive (RFC 9110 §11.1).
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let x = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    [bearer, x].into_iter().flatten().any(|given| constant_time_eq(given.as_bytes(), key.as_bytes()))
}

/// Whether a `Host` header names this server: a loopback name or address (any port), or one of
/// `allowed` (compared without the port, case-insensitively; `*` allows any). A page on another
/// origin that rebinds its own name to 127.0.0.1 still sends its own name, and is refused.
pub fn host_ok(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    allowed.iter().any(|a| {
        if a.trim() == "*" {
            return true;
        }
        let a = a.trim().trim_start_matches('[').trim_end_matches(']');
        a.strip_suffix('.').unwrap_or(a).eq_ignore_ascii_case(&name)
    })
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a `Content-Type` is JSON: `application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole body, at most `limit` bytes, within `timeout`: 413 beyond the limit, 408 when the
/// client is too slow, 400 when the connection fails.
async fn read_body(body: Body, limit: usize, timeout: std::time::Duration) -> ApiResult<axum::body::Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    let read = async {
        let mut out = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            if out.len() + chunk.len() > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(axum::body::Bytes::from(out))
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        ))
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lives as long as the request (for a stream: until the stream ends or the client leaves); writes
/// the log line and releases the admission slot when dropped.
struct RequestDone {
    app: Arc<App>,
    method: Method,
    path: String,
    route: String,
    status: Option<u16>,
    t0: Instant,
    tokens: Arc<TokenCount>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.app.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if self.status.is_none() {
            // The client went away before the answer was ready.
            self.app.metrics.request(&self.route, 499);
        }
        if self.app.cfg.log_requests {
            let (p, c) = self.tokens.get();
            let status = self.status.map_or("499 (client closed)".to_string(), |s| s.to_string());
            eprintln!(
                "{} {} {} prompt_tokens={p} completion_tokens={c} {:.3}s",
                self.method,
                self.path,
                status,
                self.t0.elapsed().as_secs_f64()
            );
        }
    }
}

/// Auth, admission, log line, metrics, and JSON for every error.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other", |m| m.as_str()).to_string();
    let mut done = RequestDone {
        app: app.clone(),
        method: req.method().clone(),
        path: req.uri().path().chars().take(200).collect(),
        route: route.clone(),
        status: None,
        t0: Instant::now(),
        tokens: Arc::default(),
        permit: None,
    };
    let resp = match admit(&app, &route, req, &mut done).await {
        Ok(req) => {
            let mut req = req;
            req.extensions_mut().insert(done.tokens.clone());
            json_errors(next.run(req).await).await
        }
        Err(e) => e.into_response(),
    };
    let status = resp.status().as_u16();
    done.status = Some(status);
    app.metrics.request(&route, status);
    let streaming = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"text/event-stream");
    if !streaming {
        return resp; // `done` logs now
    }
    // Keep `done` with the stream: it logs when the stream ends or the client leaves.
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _ = &done;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Everything before the handler, in order: the `Host` (403), the key (401), the content type of a
/// POST (415), the whole body within `body_timeout` (408, 413), then the admission slot (429); the
/// slot is taken only once the body is in, so slow senders hold none.
async fn admit(app: &Arc<App>, route: &str, req: Request, done: &mut RequestDone) -> ApiResult<Request> {
    if app.cfg.host_check {
        let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
        if let Some(host) = host.or_else(|| req.uri().authority().map(|a| a.as_str())) {
            if !host_ok(host, &app.cfg.allowed_hosts) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    format!(
                        "Host '{}' is not allowed: this server answers loopback names only (add \
                         --allowed-host NAME to serve another name)",
                        host.chars().take(100).collect::<String>()
                    ),
                )
                .code("host_not_allowed"));
            }
        }
    }
    if req.method() == Method::OPTIONS {
        return Ok(req);
    }
    if let (Some(key), false) = (&app.cfg.api_key, is_public(route)) {
        if !key_ok(req.headers(), key) {
            return Err(ApiError::unauthorized());
        }
    }
    if !is_admitted(route) {
        return Ok(req);
    }
    let req = if req.method() == Method::POST {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "the request body must be JSON with `Content-Type: application/json`",
            )
            .code("unsupported_media_type"));
        }
        let (parts, body) = req.into_parts();
        let bytes = read_body(body, app.cfg.body_limit, app.cfg.body_timeout).await?;
        Request::from_parts(parts, Body::from(bytes))
    } else {
        req
    };
    match app.admit.clone().try_acquire_owned() {
        Ok(p) => {
            app.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            done.permit = Some(p);
            Ok(req)
        }
        Err(_) => {
            app.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::overloaded(format!("{} requests are in flight; retry later", app.cfg.max_concurrent)))
        }
    }
}

/// An error response that is not JSON (axum's own rejections, say) becomes OpenAI's error shape with
/// the same status.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 64 << 10).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            "invalid_request_error"
        }
        StatusCode::NOT_FOUND => "not_found_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    ApiError::new(status, kind, text).into_response()
}
