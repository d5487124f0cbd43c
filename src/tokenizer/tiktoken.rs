//! tiktoken-format byte-level BPE, exact to Python tiktoken's `CoreBPE` (spec §3.1–3.2).
//!
//! A ranks file holds one `base64(token_bytes) SP rank` per line. The 11 special tokens are appended
//! after the last rank in the fixed order of [`SPECIAL_TOKENS`]. Encoding splits the text on
//! [`PAT_STR`]; a piece that is itself a vocabulary entry is emitted directly, otherwise its bytes are
//! merged pairwise, always merging the lowest-ranked adjacent pair (leftmost on ties), like tiktoken's
//! `byte_pair_encode`. The merge loop here uses a heap, so a long piece costs O(n log n), not O(n²).
//! Reference: openai/tiktoken `src/lib.rs` (`_encode_native`, `_byte_pair_merge`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use base64::Engine;
use fancy_regex::Regex;

use crate::error::{Error, Result};

/// The pre-tokenization pattern of `tokenization_zhinao.py` (Qwen-v1 pattern with single digits).
pub const PAT_STR: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The special tokens, in id order: `<pad>` gets id `n_ranks`, `<|im_end|>` gets `n_ranks + 10`.
pub const SPECIAL_TOKENS: [&str; 11] = [
    "<pad>",
    "<unk>",
    "<mask>",
    "<eod>",
    "<eop>",
    "[space2]",
    "[space3]",
    "[space4]",
    "[space8]",
    "<|im_start|>",
    "<|im_end|>",
];

/// A loaded tiktoken vocabulary: BPE ranks plus the appended special tokens.
pub struct TiktokenBpe {
    /// token bytes → rank, for the BPE ranks only (ids `0..n_ranks`).
    encoder: HashMap<Vec<u8>, u32>,
    /// id → bytes, for every id (ranks, then specials as their literal text).
    decoder: Vec<Vec<u8>>,
    /// rank of each single byte (every byte must be in the vocabulary).
    byte_ranks: [u32; 256],
    /// special literal → id.
    special_encoder: HashMap<&'static str, u32>,
    pattern: Regex,
    special_pattern: Regex,
}

impl TiktokenBpe {
    /// Loads a ranks file. Errors name the file and the 1-based line of any malformed entry.
    ///
    /// Stricter than the reference (which builds a plain dict): ranks must be exactly `0..n` with no
    /// duplicate tokens, and all 256 single bytes must be present, since special ids are `n..n+11`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let contents = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_ranks_bytes(&contents, &path.display().to_string())
    }

    /// Parses ranks-file contents; `source` names the file in error messages.
    pub fn from_ranks_bytes(contents: &[u8], source: &str) -> Result<Self> {
        let bad = |line: usize, msg: String| Error::bad_file(source, format!("line {line}: {msg}"));
        let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
        let mut encoder = HashMap::new();
        // Python `bytes.splitlines()` splits on \n, \r\n and \r; empty lines are skipped.
        for (i, line) in contents
            .split(|&b| b == b'\n')
            .enumerate()
            .flat_map(|(i, l)| l.split(|&b| b == b'\r').map(move |part| (i + 1, part)))
        {
            let text = std::str::from_utf8(line).map_err(|_| bad(i, "not ASCII text".into()))?;
            let fields: Vec<&str> = text.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let [token_b64, rank] = fields[..] else {
                return Err(bad(i, format!("expected `base64 rank`, found {} fields", fields.len())));
            };
            let token = base64::engine::general_purpose::STANDARD
                .decode(token_b64)
                .map_err(|e| bad(i, format!("bad base64 {token_b64:?}: {e}")))?;
            let rank: u32 = rank.parse().map_err(|_| bad(i, format!("bad rank {rank:?}")))?;
            if token.is_empty() {
                return Err(bad(i, "empty token".into()));
            }
            let slot = rank as usize;
            if slot >= by_rank.len() {
                by_rank.resize(slot + 1, None);
            }
            if by_rank[slot].is_some() {
                return Err(bad(i, format!("rank {rank} appears twice")));
            }
            if encoder.insert(token.clone(), rank).is_some() {
                return Err(bad(i, format!("token {token:?} appears twice")));
            }
            by_rank[slot] = Some(token);
        }
        if by_rank.is_empty() {
            return Err(Error::bad_file(source, "no BPE ranks found"));
        }
        let mut decoder = Vec::with_capacity(by_rank.len() + SPECIAL_TOKENS.len());
        for (rank, token) in by_rank.into_iter().enumerate() {
            let token = token.ok_or_else(|| Error::bad_file(source, format!("rank {rank} is missing")))?;
            decoder.push(token);
        }
        let mut byte_ranks = [0u32; 256];
        for (b, slot) in byte_ranks.iter_mut().enumerate() {
            *slot = *encoder
                .get(&[b as u8][..])
                .ok_or_else(|| Error::bad_file(source, format!("single byte 0x{b:02x} has no rank")))?;
        }
        let n_ranks = decoder.len() as u32;
        let mut special_encoder = HashMap::new();
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            special_encoder.insert(*s, n_ranks + i as u32);
            decoder.push(s.as_bytes().to_vec());
        }
        let pattern = Regex::new(PAT_STR).map_err(|e| Error::Tokenizer(format!("PAT_STR: {e}")))?;
        let alternation: Vec<String> = SPECIAL_TOKENS.iter().map(|s| fancy_regex::escape(s).into_owned()).collect();
        let special_pattern =
            Regex::new(&alternation.join("|")).map_err(|e| Error::Tokenizer(format!("special pattern: {e}")))?;
        Ok(Self { encoder, decoder, byte_ranks, special_encoder, pattern, special_pattern })
    }

    /// Number of BPE ranks (the first special id).
    pub fn n_ranks(&self) -> usize {
        self.encoder.len()
    }

    /// Ranks plus specials.
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// The id of a special token literal, if it is one.
    pub fn special_id(&self, literal: &str) -> Option<u32> {
        self.special_encoder.get(literal).copied()
    }

    /// The bytes of a token (a special token's bytes are its literal text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.decoder.get(id as usize).map(Vec::as_slice)
    }

    /// tiktoken `encode(text, allowed_special="all")` when `allow_special`, else
    /// `encode(text, allowed_special=set(), disallowed_special=())` (= `encode_ordinary`).
    ///
    /// In the "all" mode the text is cut at each special literal and each segment is split on
    /// [`PAT_STR`] on its own, exactly as tiktoken does.
    pub fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut start = 0;
        loop {
            let next_special = if allow_special {
                self.special_pattern.find_from_pos(text, start).map_err(regex_error)?
            } else {
                None
            };
            let end = next_special.as_ref().map_or(text.len(), |m| m.start());
            self.encode_ordinary_into(&text[start..end], &mut ids)?;
            match next_special {
                Some(m) => {
                    let id =
                        self.special_encoder.get(m.as_str()).copied().ok_or_else(|| {
                            Error::Tokenizer(format!("special pattern matched unknown {:?}", m.as_str()))
                        })?;
                    ids.push(id);
                    start = m.end();
                }
                None => return Ok(ids),
            }
        }
    }

    /// Splits `text` on [`PAT_STR`] and BPE-encodes each piece, appending to `ids`.
    fn encode_ordinary_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        for piece in self.pattern.find_iter(text) {
            let piece = piece.map_err(regex_error)?.as_str().as_bytes();
            match self.encoder.get(piece) {
                Some(&rank) => ids.push(rank),
                None => self.byte_pair_encode(piece, ids),
            }
        }
        Ok(())
    }

    /// tiktoken's `byte_pair_encode`: repeatedly merge the adjacent pair whose concatenation has the
    /// lowest rank (leftmost among equals) until no adjacent pair is in the vocabulary.
    ///
    /// Parts form a linked list over byte offsets; a min-heap holds (pair rank, start offset) with
    /// stale entries skipped, which pops the same pair tiktoken's linear scan picks.
    fn byte_pair_encode(&self, piece: &[u8], ids: &mut Vec<u32>) {
        let n = piece.len();
        // Part i starts at byte i and ends where part next[i] starts; n is the end sentinel.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut part_rank: Vec<u32> = piece.iter().map(|&b| self.byte_ranks[b as usize]).collect();
        let mut pair_rank = vec![u32::MAX; n];
        let mut heap = BinaryHeap::new();

        let rank_of = |start: usize, end: usize| self.encoder.get(&piece[start..end]).copied();
        for (i, slot) in pair_rank.iter_mut().enumerate().take(n.saturating_sub(1)) {
            if let Some(r) = rank_of(i, i + 2) {
                *slot = r;
                heap.push(Reverse((r, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            if !alive[i] || pair_rank[i] != rank {
                continue; // stale
            }
            // merge part i with part j = next[i]
            let j = next[i];
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            part_rank[i] = rank;
            // the pair starting at i now spans parts i and next[i]
            pair_rank[i] = u32::MAX;
            if next[i] < n {
                if let Some(r) = rank_of(i, next[next[i]]) {
                    pair_rank[i] = r;
                    heap.push(Reverse((r, i)));
                }
            }
            // the pair starting at prev[i] now ends where the merged part ends
            let p = prev[i];
            if p < n {
                pair_rank[p] = u32::MAX;
                if let Some(r) = rank_of(p, next[i]) {
                    pair_rank[p] = r;
                    heap.push(Reverse((r, p)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            ids.push(part_rank[i]);
            i = next[i];
        }
    }
}

fn regex_error(e: fancy_regex::Error) -> Error {
    Error::Tokenizer(format!("pre-tokenizer regex failed: {e}"))
}
