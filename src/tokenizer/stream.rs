//! Streaming detokenization: feed generated ids one at a time, get the newly completed text.
//!
//! The concatenation of everything [`StreamDecoder::push`] and [`StreamDecoder::finish`] return equals
//! [`Tokenizer::decode`] of all the ids. Two things are held back until they are settled:
//! - trailing bytes of an incomplete UTF-8 sequence (a Chinese character or emoji split across tokens);
//! - a trailing possible prefix of a `[spaceN]` literal (`[`, `[sp`, `[space4`), which `deconvert`
//!   may still turn into spaces once the rest arrives.
//!
//! The reference streamer (`TextIterStreamer`) instead re-decodes everything with `errors="ignore"`
//! and yields cumulative strings; the final text is the same when the output is valid UTF-8.

use super::{deconvert, Tokenizer};

/// Incremental decoder over one generated sequence.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    skip_special: bool,
    /// bytes of an incomplete trailing UTF-8 sequence
    pending_bytes: Vec<u8>,
    /// decoded text not yet emitted because it may start a `[spaceN]` literal
    pending_text: String,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder; `skip_special` as in [`Tokenizer::decode`].
    pub fn new(tokenizer: &'t Tokenizer, skip_special: bool) -> Self {
        Self { tokenizer, skip_special, pending_bytes: Vec::new(), pending_text: String::new() }
    }

    /// Adds one id; returns the text it completes (often empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tokenizer.is_skipped_on_decode(id) {
            return String::new();
        }
        if let Some(bytes) = self.tokenizer.token_bytes(id) {
            self.pending_bytes.extend_from_slice(bytes);
        }
        let complete = complete_utf8_len(&self.pending_bytes);
        let rest = self.pending_bytes.split_off(complete);
        self.pending_text.push_str(&String::from_utf8_lossy(&self.pending_bytes));
        self.pending_bytes = rest;
        let hold = space_token_prefix_start(&self.pending_text);
        let held = self.pending_text.split_off(hold);
        let out = deconvert(&self.pending_text);
        self.pending_text = held;
        out
    }

    /// Flushes whatever is held back (an unfinished UTF-8 sequence becomes U+FFFD, like `decode`).
    pub fn finish(&mut self) -> String {
        self.pending_text.push_str(&String::from_utf8_lossy(&self.pending_bytes));
        self.pending_bytes.clear();
        deconvert(&std::mem::take(&mut self.pending_text))
    }
}

/// Length of the prefix of `bytes` that decodes the same whatever bytes follow: everything except a
/// trailing truncated-but-valid UTF-8 sequence. Invalid sequences count as complete (they become
/// U+FFFD either way).
fn complete_utf8_len(bytes: &[u8]) -> usize {
    match bytes.utf8_chunks().last() {
        Some(chunk) if !chunk.invalid().is_empty() => {
            let invalid = chunk.invalid();
            // At the end of input an unfinished sequence is reported as invalid; it is only
            // truncated (not wrong) when decoding it alone reports "incomplete" (no error length).
            match std::str::from_utf8(invalid) {
                Err(e) if e.error_len().is_none() && e.valid_up_to() == 0 => bytes.len() - invalid.len(),
                _ => bytes.len(),
            }
        }
        _ => bytes.len(),
    }
}

/// Where a trailing proper prefix of a `[spaceN]` literal starts in `text` (`text.len()` if none).
/// `[` occurs only at the start of those literals, so only the last `[` can begin one.
fn space_token_prefix_start(text: &str) -> usize {
    let Some(pos) = text.rfind('[') else {
        return text.len();
    };
    let tail = &text[pos..];
    let is_prefix = ["[space2]", "[space3]", "[space4]", "[space8]"]
        .iter()
        .any(|lit| lit.len() > tail.len() && lit.starts_with(tail));
    if is_prefix {
        pos
    } else {
        text.len()
    }
}
