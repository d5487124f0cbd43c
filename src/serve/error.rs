//! Every error the server answers with, in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`, plus `n_prompt_tokens` and `n_ctx` when a prompt
//! does not fit. Never plain text: axum's own rejections (body too large, unknown route, wrong method)
//! are turned into this shape too.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::backend::BackendError;

/// An error response.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `unavailable_error`, `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Extra fields inside `error` (`n_prompt_tokens`, `n_ctx`).
    pub extra: Option<Box<Map<String, Value>>>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u32>,
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None, extra: None, retry_after: None }
    }
    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// 422: well-formed JSON of the wrong shape or type.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message)
    }
    /// 400 for a named request field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).param(param)
    }
    /// 400 for a feature this server does not implement yet.
    pub fn unsupported(param: &str, what: &str) -> Self {
        Self::bad_request(format!("{what} is not supported by this server")).param(param).code("unsupported_parameter")
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid or missing API key")
            .code("invalid_api_key")
    }
    /// 429 with `Retry-After: 1`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).code("overloaded");
        e.retry_after = Some(1);
        e
    }
    /// 503 (loading or shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", message);
        e.retry_after = Some(1);
        e
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    /// 400 naming the prompt length and the context.
    pub fn context_overflow(n_prompt_tokens: usize, n_ctx: usize, param: &str) -> Self {
        let mut e = Self::bad_request(format!(
            "the prompt has {n_prompt_tokens} tokens (n_prompt_tokens) but the model's context holds {n_ctx} (n_ctx), \
             and at least one position must be left to generate"
        ))
        .param(param)
        .code("context_length_exceeded");
        let mut extra = Map::new();
        extra.insert("n_prompt_tokens".into(), json!(n_prompt_tokens));
        extra.insert("n_ctx".into(), json!(n_ctx));
        e.extra = Some(Box::new(extra));
        e
    }

    pub fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }
    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Value {
        let mut e = Map::new();
        e.insert("message".into(), json!(self.message));
        e.insert("type".into(), json!(self.kind));
        e.insert("param".into(), json!(self.param));
        e.insert("code".into(), json!(self.code));
        for (k, v) in self.extra.iter().flat_map(|m| m.iter()) {
            e.insert(k.clone(), v.clone());
        }
        json!({ "error": e })
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Invalid { message, param } => {
                let mut a = ApiError::bad_request(message);
                a.param = param;
                a
            }
            BackendError::ContextOverflow { n_prompt_tokens, n_ctx } => {
                ApiError::context_overflow(n_prompt_tokens, n_ctx, "prompt")
            }
            BackendError::Internal(m) => ApiError::internal(m),
            BackendError::DeviceLost(m) => {
                ApiError::unavailable(format!("the GPU device was lost ({m}); the server must be restarted"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.message)
    }
}

/// A request body parsed as JSON into `T`: syntax errors (and bodies that are not UTF-8) are 400,
/// well-formed JSON of the wrong shape is 422; the message names the line and column.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("the request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let msg = format!("invalid request body: {e}");
        match e.classify() {
            Category::Data => ApiError::unprocessable(msg),
            Category::Io | Category::Syntax | Category::Eof => ApiError::bad_request(msg),
        }
    })
}

/// `text` with every absolute local path (`/…`, `~/…`, `C:\…`) cut to its last component (`…/name`):
/// what a client may read of a load error. The server's own log keeps the full text.
pub fn redact_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let at_start = prev.is_none_or(|p| p.is_whitespace() || "\"'`(=[<".contains(p));
        let b = rest.as_bytes();
        let drive = b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/');
        if at_start && (c == '/' || (c == '~' && rest[1..].starts_with('/')) || drive) {
            let end = rest.find(|ch: char| ch.is_whitespace() || "\"'`)]>,".contains(ch)).unwrap_or(rest.len());
            let path = &rest[..end];
            let trimmed = path.trim_end_matches([':', '.', ';']);
            let name = trimmed.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next().unwrap_or("");
            out.push_str("…/");
            out.push_str(name);
            out.push_str(&path[trimmed.len()..]);
            prev = path.chars().last();
            rest = &rest[end..];
            continue;
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_paths;

    #[test]
    fn paths_are_cut_to_their_last_component() {
        assert_eq!(
            redact_paths("reading /home/alice/models/zhinao/config.json: no such file"),
            "reading …/config.json: no such file"
        );
        assert_eq!(redact_paths("in \"/srv/m/\" (C:\\Users\\bob\\m.bin)"), "in \"…/m\" (…/m.bin)");
        assert_eq!(redact_paths("~/x/y.safetensors."), "…/y.safetensors.");
        assert_eq!(redact_paths("see http://host/a and 3/4"), "see http://host/a and 3/4");
    }
}
