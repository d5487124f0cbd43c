//! HF `tokenizer.json` backend (spec §3.4), through the `tokenizers` crate.
//!
//! Used only when a model directory has no `vocab/360.tiktoken`. `convert`/`deconvert` stay outside
//! `tokenizers` (done by [`super::Tokenizer`]); decoding maps each token back to bytes through the
//! GPT-2 byte↔unicode table, so decode is identical to the tiktoken backend.
//!
//! The file's `padding` and `truncation` settings are ignored: ids are always those of the text
//! alone.
//!
//! Limits:
//! - HF merges only the listed pairs while tiktoken merges any pair in the ranks table; a converted
//!   vocabulary can therefore differ on rare pieces (spec §3.4 caveat). The tiktoken file is exact.
//! - `tokenizers` always matches added (special) tokens, so it cannot run the `allowed_special=set()`
//!   mode directly. [`SpecialMode::None`] is emulated: when the text contains a special literal, the
//!   text is cut into [`PAT_STR`] pieces first (no piece can contain a whole special literal, since
//!   each literal mixes letters and punctuation) and every piece is encoded on its own. This matches
//!   tiktoken as long as re-splitting a piece on [`PAT_STR`] yields the piece itself.

use std::collections::HashMap;
use std::path::Path;

use fancy_regex::Regex;

use super::tiktoken::{PAT_STR, SPECIAL_TOKENS};
use super::SpecialMode;
use crate::error::{Error, Result};

/// A `tokenizer.json` byte-level BPE with the decode table rebuilt as raw bytes.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// id → token bytes (added tokens as their literal text).
    decoder: Vec<Vec<u8>>,
    pattern: Regex,
}

impl HfTokenizer {
    /// Loads `tokenizer.json`; the model must be byte-level (GPT-2 byte↔unicode mapped tokens).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::bad_file(path.display(), msg);
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
        // A file may configure padding or truncation; both would change the ids of one text
        // (pad ids appended, pieces dropped). The engine pads and bounds its inputs itself.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| bad(e.to_string()))?;
        let added = inner.get_added_tokens_decoder();
        let unicode_to_byte: HashMap<char, u8> = bytes_to_unicode().into_iter().map(|(b, c)| (c, b)).collect();
        let vocab_size = inner.get_vocab_size(true);
        let mut decoder = Vec::with_capacity(vocab_size);
        for id in 0..vocab_size as u32 {
            let bytes = if let Some(tok) = added.get(&id) {
                tok.content.as_bytes().to_vec()
            } else if let Some(tok) = inner.id_to_token(id) {
                tok.chars()
                    .map(|c| unicode_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| bad(format!("token {id} ({tok:?}) is not byte-level BPE")))?
            } else {
                Vec::new() // a hole in the id space decodes to nothing
            };
            decoder.push(bytes);
        }
        let pattern = Regex::new(PAT_STR).map_err(|e| Error::Tokenizer(format!("PAT_STR: {e}")))?;
        Ok(Self { inner, decoder, pattern })
    }

    /// The id of a token (special literal or mapped BPE string).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The bytes of a token.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.decoder.get(id as usize).map(Vec::as_slice)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// Encodes already-converted text; see the module doc for [`SpecialMode::None`].
    pub fn encode(&self, text: &str, mode: SpecialMode) -> Result<Vec<u32>> {
        if mode == SpecialMode::All || !SPECIAL_TOKENS.iter().any(|s| text.contains(s)) {
            return self.encode_raw(text);
        }
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(text) {
            let piece = piece.map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex failed: {e}")))?;
            ids.extend(self.encode_raw(piece.as_str())?);
        }
        Ok(ids)
    }

    fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// GPT-2's reversible byte → printable-char map (printable Latin-1 bytes map to themselves, the rest
/// to U+0100 onwards in byte order).
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b, char::from(b))
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                (b, c)
            }
        })
        .collect()
}
