//! Prompt construction: `model.chat`'s `make_context` (spec §4.1) and the reranker input (spec §7).
//!
//! References: `generation_utils.py` `make_context`, `Reranking/flag_models.py` `preprocess`; Python
//! twins in `tools/fixtures/zhinao_tokenizer.py`. Every piece (role, newline, content) is encoded on
//! its own, so BPE never merges across a boundary, exactly like the reference.

use serde::{Deserialize, Serialize};

use super::{SpecialMode, Tokenizer};
use crate::error::{Error, Result};

/// The system prompt `make_context` uses when the messages carry none (note the period).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// One chat message; `role` is `system`, `user` or `assistant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// The history budget of `make_context`: history turns are kept only while they fit in
/// `model_max_length - max_new_tokens` together with the system, query and final pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextBudget {
    /// `config.model_max_length` (e.g. 4096 for 7B-Chat-4K).
    pub model_max_length: usize,
    /// Tokens reserved for generation. The reference replaces 0 by generation_config's 1024 before
    /// using it; callers pass the resolved value.
    pub max_new_tokens: usize,
}

/// Tokens a chat's history must leave free for the answer: `max_new` (what the caller will generate)
/// but never more than a quarter of the context `n_ctx`. History is kept while it fits the rest, and
/// the answer then gets all the room left. (Reserving the whole `max_new` drops every earlier turn as
/// soon as `max_new` nears `n_ctx`; reserving nothing lets a long history starve the answer.) One
/// rule for every front end: the server, the CLI's chat, the app and Python.
pub fn history_reserve(max_new: usize, n_ctx: usize) -> usize {
    max_new.min(n_ctx / 4).max(1)
}

/// `make_context(model, tokenizer, messages, system, max_new_tokens)`: the prompt ids for `model.chat`.
///
/// `messages`: an optional leading system message, then alternating user/assistant turns, ending
/// with a user message. The system text is the leading system message's content when non-empty,
/// else `default_system` (normally [`DEFAULT_SYSTEM`]); no system turn when that is empty too.
/// Newest history pairs are kept while `len(pair) + len(kept) < budget − len(system) − len(query) −
/// len(final)`; the query is never truncated. Roles and contents use [`SpecialMode::None`].
pub fn make_context(
    tokenizer: &Tokenizer,
    messages: &[Message],
    default_system: &str,
    budget: ContextBudget,
) -> Result<Vec<u32>> {
    Ok(make_context_report(tokenizer, messages, default_system, budget)?.0)
}

/// [`make_context`], also returning how many history messages did not fit the budget (the oldest
/// ones, two per dropped user/assistant pair), so a caller can say so instead of losing them silently.
pub fn make_context_report(
    tokenizer: &Tokenizer,
    messages: &[Message],
    default_system: &str,
    budget: ContextBudget,
) -> Result<(Vec<u32>, usize)> {
    let Conversation { system, history, query } = parse_messages(messages)?;
    let system = if system.is_empty() { default_system } else { system };
    let im_start = tokenizer.im_start();
    let im_end = tokenizer.im_end();
    let nl = tokenizer.encode("\n", SpecialMode::All)?;
    // im_start role \n content im_end \n
    let turn = |role: &str, content: &str| -> Result<Vec<u32>> {
        let mut ids = vec![im_start];
        ids.extend(tokenizer.encode(role, SpecialMode::None)?);
        ids.extend(&nl);
        ids.extend(tokenizer.encode(content, SpecialMode::None)?);
        ids.push(im_end);
        ids.extend(&nl);
        Ok(ids)
    };

    let system_ids = if system.is_empty() { Vec::new() } else { turn("system", system)? };
    let query_ids = turn("user", query)?;
    let mut final_ids = vec![im_start];
    final_ids.extend(tokenizer.encode("assistant", SpecialMode::None)?);
    final_ids.extend(&nl);

    let max_input = budget.model_max_length as i64 - budget.max_new_tokens as i64;
    let max_history = max_input - (system_ids.len() + query_ids.len() + final_ids.len()) as i64;
    let mut kept: Vec<Vec<u32>> = Vec::new(); // newest first
    let mut kept_len = 0usize;
    for (q, a) in history.iter().rev() {
        let mut pair = turn("user", q)?;
        pair.extend(turn("assistant", a)?);
        if ((pair.len() + kept_len) as i64) < max_history {
            kept_len += pair.len();
            kept.push(pair);
        } else {
            break;
        }
    }

    let mut ids = system_ids;
    for pair in kept.iter().rev() {
        ids.extend(pair);
    }
    ids.extend(query_ids);
    ids.extend(final_ids);
    Ok((ids, 2 * (history.len() - kept.len())))
}

/// A conversation split the way `make_context` reads it.
struct Conversation<'m> {
    /// the leading system message's content, or ""
    system: &'m str,
    /// (user, assistant) pairs, oldest first
    history: Vec<(&'m str, &'m str)>,
    /// the final user message
    query: &'m str,
}

/// Splits messages into system, history pairs and query, checking the reference's assertions.
fn parse_messages(messages: &[Message]) -> Result<Conversation<'_>> {
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (first.content.as_str(), rest),
        Some(_) => ("", messages),
        None => return Err(Error::Input("make_context: no messages".into())),
    };
    let Some((last, turns)) = rest.split_last() else {
        return Err(Error::Input("make_context: no user message after the system message".into()));
    };
    if last.role != "user" {
        return Err(Error::Input(format!("make_context: the last message must be from the user, not {:?}", last.role)));
    }
    if turns.len() % 2 != 0 {
        return Err(Error::Input("make_context: history must alternate user and assistant turns".into()));
    }
    let mut history = Vec::with_capacity(turns.len() / 2);
    for pair in turns.chunks_exact(2) {
        if pair[0].role != "user" || pair[1].role != "assistant" {
            return Err(Error::Input(format!(
                "make_context: expected a user then an assistant turn, found {:?} then {:?}",
                pair[0].role, pair[1].role
            )));
        }
        history.push((pair[0].content.as_str(), pair[1].content.as_str()));
    }
    Ok(Conversation { system, history, query: last.content.as_str() })
}

/// The reranker's input length (`max_len` of flag_models.py).
pub const RERANK_MAX_LEN: usize = 1024;
/// `answer_len` of flag_models.py: each piece is truncated to `max_len - answer_len` tokens (960).
const RERANK_ANSWER_LEN: usize = 64;

/// One reranker input, unpadded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RerankInput {
    /// Prompt ids, at most [`RERANK_MAX_LEN`]; the reference right-pads with `<eod>` to 1024.
    pub ids: Vec<u32>,
    /// Index of the token just before the `"0"` placeholder label (the newline after
    /// `<|im_start|>assistant`), whose hidden state predicts the label.
    pub label_pos: usize,
}

/// `preprocess` of `Reranking/flag_models.py` for one (query, passage) pair, system message "":
///
/// ```text
/// [im_start] tok("system") nl tok("") [im_end] nl
/// tok("<|im_start|>user") nl tok(query + "\n\n" + passage) [im_end] nl
/// tok("<|im_start|>assistant") nl tok("0") [im_end] nl
/// ```
/// `tok` truncates to 960 tokens; the whole is cut to 1024. The fixed pieces parse their special
/// literals ([`SpecialMode::All`], as the reference); the query and passage use
/// [`SpecialMode::Spaces`], so untrusted text cannot forge `<|im_end|>` (the one departure from the
/// reference, which parses them there too).
pub fn reranker_input(tokenizer: &Tokenizer, query: &str, passage: &str) -> Result<RerankInput> {
    Ok(reranker_input_limited(tokenizer, query, passage, RERANK_MAX_LEN)?.0)
}

/// [`reranker_input`] with `max_len` in place of 1024 (a model whose context is shorter takes
/// `max_len` = its context; pieces are then cut to `max_len - 64`). Also returns the prompt's
/// length before truncation when anything was cut, `None` when the pair fit whole.
pub fn reranker_input_limited(
    tokenizer: &Tokenizer,
    query: &str,
    passage: &str,
    max_len: usize,
) -> Result<(RerankInput, Option<usize>)> {
    RerankPrompt::new(tokenizer, query, max_len)?.input(passage)
}

/// The reranker prompts of one query: everything that does not depend on the passage is tokenized
/// once (the fixed pieces, and `query + "\n\n"`), so scoring n passages costs one query and n
/// passages, not n queries.
///
/// `tok(query + "\n\n" + passage)` equals `tok(query + "\n\n") ++ tok(passage)` whenever the
/// passage begins with a non-whitespace character: every pre-tokenizer piece that can hold a newline
/// (`\s*[\r\n]+`, or punctuation followed by `[\r\n]*`) ends at the last newline of its run, so no
/// piece crosses from the separator into the passage, and BPE never merges across pieces. A passage
/// that begins with whitespace (or `[br]`, `<br>`, which become newlines) could join the separator's
/// piece: it is tokenized with the query, as the reference does. [`RerankPrompt::work`] counts the
/// bytes this costs, so a server can cap it.
pub struct RerankPrompt<'t> {
    tokenizer: &'t Tokenizer,
    query: String,
    max_len: usize,
    /// `[im_start] system nl [im_end] nl <|im_start|>user nl`
    head: Vec<u32>,
    /// `tok(query + "\n\n")`, whole (the content piece is cut once the passage is added).
    query_ids: Vec<u32>,
    /// `[im_end] nl <|im_start|>assistant nl`; the label pieces follow.
    mid: Vec<u32>,
    /// `0 [im_end] nl`
    label: Vec<u32>,
    /// Tokens the fixed pieces lost to the piece limit (only with a tiny `max_len`).
    fixed_cut: usize,
}

impl<'t> RerankPrompt<'t> {
    /// Tokenizes everything but the passage; `max_len` as in [`reranker_input_limited`].
    pub fn new(tokenizer: &'t Tokenizer, query: &str, max_len: usize) -> Result<Self> {
        if max_len <= RERANK_ANSWER_LEN {
            return Err(Error::Input(format!("reranker input limit {max_len} is not above {RERANK_ANSWER_LEN}")));
        }
        let piece_max = max_len - RERANK_ANSWER_LEN;
        let mut fixed_cut = 0;
        let mut tok = |text: &str| -> Result<Vec<u32>> {
            let mut ids = tokenizer.encode(text, SpecialMode::All)?;
            fixed_cut += ids.len().saturating_sub(piece_max);
            ids.truncate(piece_max);
            Ok(ids)
        };
        let nl = tokenizer.encode("\n", SpecialMode::All)?;
        let mut head = vec![tokenizer.im_start()];
        head.extend(tokenizer.encode("system", SpecialMode::All)?);
        head.extend(&nl);
        head.extend(tok("")?);
        head.push(tokenizer.im_end());
        head.extend(&nl);
        head.extend(tok("<|im_start|>user")?);
        head.extend(&nl);
        let mut mid = vec![tokenizer.im_end()];
        mid.extend(&nl);
        mid.extend(tok("<|im_start|>assistant")?);
        mid.extend(&nl);
        let mut label = tok("0")?;
        label.push(tokenizer.im_end());
        label.extend(&nl);
        let query_ids = tokenizer.encode(&format!("{query}\n\n"), SpecialMode::Spaces)?;
        Ok(RerankPrompt { tokenizer, query: query.to_string(), max_len, head, query_ids, mid, label, fixed_cut })
    }

    /// Bytes tokenized for `passages` (the query once, each passage once, and the query again for a
    /// passage that is tokenized with it).
    pub fn work(query: &str, passages: &[String]) -> usize {
        let again = passages.iter().filter(|p| Self::loose(p)).count();
        query.len().saturating_mul(again + 1).saturating_add(passages.iter().map(String::len).sum())
    }

    fn loose(passage: &str) -> bool {
        passage.starts_with(char::is_whitespace) || passage.starts_with("[br]") || passage.starts_with("<br>")
    }

    /// The prompt of the query with `passage`, and its length before truncation when anything was cut.
    pub fn input(&self, passage: &str) -> Result<(RerankInput, Option<usize>)> {
        let piece_max = self.max_len - RERANK_ANSWER_LEN;
        let mut content = if Self::loose(passage) {
            self.tokenizer.encode(&format!("{}\n\n{passage}", self.query), SpecialMode::Spaces)?
        } else {
            let mut ids = self.query_ids.clone();
            ids.extend(self.tokenizer.encode(passage, SpecialMode::Spaces)?);
            ids
        };
        let cut = self.fixed_cut + content.len().saturating_sub(piece_max);
        content.truncate(piece_max);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.extend(&self.head);
        ids.extend(&content);
        ids.extend(&self.mid);
        let label_pos = ids.len() - 1;
        ids.extend(&self.label);
        let full = ids.len() + cut;
        ids.truncate(self.max_len);
        if label_pos + 1 >= ids.len() {
            let max_len = self.max_len;
            return Err(Error::Input(format!("reranker input: the label placeholder falls beyond {max_len} tokens")));
        }
        Ok((RerankInput { ids, label_pos }, (full > self.max_len || cut > 0).then_some(full)))
    }
}
