//! Stop strings over a text stream. Text arrives in pieces; what can no longer be the start of a stop
//! string is released at once, a trailing possible prefix is held back, and when a stop string appears
//! the text before it is released and the rest (the stop string included) is dropped, as OpenAI,
//! llama.cpp and vLLM do by default. Works on `&str`, so it never splits a UTF-8 character.

/// What one piece of text gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched {
    /// Text to emit (possibly empty); no stop string yet.
    Text(String),
    /// A stop string was found: emit this text, then stop.
    Stop(String),
}

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            done: false,
        }
    }

    /// Feed the next piece of text.
    pub fn push(&mut self, text: &str) -> Matched {
        if self.done {
            return Matched::Stop(String::new());
        }
        if self.stops.is_empty() {
            return Matched::Text(text.to_string());
        }
        self.held.push_str(text);
        // The earliest occurrence of any stop string.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.done = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return Matched::Stop(out);
        }
        let keep = self.partial_suffix_start();
        let rest = self.held.split_off(keep);
        Matched::Text(std::mem::replace(&mut self.held, rest))
    }

    /// The text still held back when the stream ends (no stop string completed).
    pub fn finish(&mut self) -> String {
        if self.done {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Where the longest suffix of `held` that is a proper prefix of some stop string begins.
    fn partial_suffix_start(&self) -> usize {
        let h = &self.held;
        let mut start = h.len();
        for (i, _) in h.char_indices().rev() {
            let tail = &h[i..];
            if self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail)) {
                start = i;
            }
            if h.len() - i >= self.stops.iter().map(|s| s.len()).max().unwrap_or(0) {
                break;
            }
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                Matched::Text(t) => out.push_str(&t),
                Matched::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_are_removed_across_pieces() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
        assert_eq!(run(&["你好"], &["说", "你", "好吗"]), ("说".into(), true));
        assert_eq!(run(&["xyz", "b"], &["aab"]), ("aa".into(), true));
    }

    #[test]
    fn held_prefixes_are_released_when_they_fail() {
        assert_eq!(run(&["END"], &["E", "N", "x"]), ("ENx".into(), false));
        assert_eq!(run(&["END"], &["abc", "EN"]), ("abcEN".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a"]), ("a".into(), false));
    }

    #[test]
    fn releases_as_early_as_possible() {
        let mut m = StopMatcher::new(&["ab".to_string()]);
        assert_eq!(m.push("xxa"), Matched::Text("xx".into()));
        assert_eq!(m.push("c"), Matched::Text("ac".into()));
        assert_eq!(m.push("中"), Matched::Text("中".into()));
    }
}
