//! Streaming detokenization and stop sequences.
//!
//! Byte-level BPE splits multi-byte characters across tokens, so decoding token by token can
//! produce half a character. `Detokenizer` holds text back until it decodes cleanly; `StopMatcher`
//! holds back the tail that could still become a stop sequence.
use tokenizers::Tokenizer;

/// Turns a stream of tokens into a stream of whole characters.
pub struct Detokenizer<'t> {
    tokenizer: &'t Tokenizer,
    tokens: Vec<u32>,
    prev_index: usize,
    current_index: usize,
}

impl<'t> Detokenizer<'t> {
    /// A detokenizer over `tokenizer`'s vocabulary.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            prev_index: 0,
            current_index: 0,
        }
    }

    fn decode(&self, tokens: &[u32]) -> String {
        self.tokenizer.decode(tokens, true).unwrap_or_default()
    }

    /// Add a token; returns the text it completes, if any. Never returns a broken character.
    pub fn push(&mut self, token: u32) -> Option<String> {
        let prev_text = self.decode(&self.tokens[self.prev_index..self.current_index]);
        self.tokens.push(token);
        let text = self.decode(&self.tokens[self.prev_index..]);
        if text.len() > prev_text.len()
            && !text.ends_with('\u{FFFD}')
            && text.is_char_boundary(prev_text.len())
        {
            let delta = text[prev_text.len()..].to_string();
            self.prev_index = self.current_index;
            self.current_index = self.tokens.len();
            Some(delta)
        } else {
            None
        }
    }

    /// Whatever is still held back (at the end of generation).
    pub fn flush(&mut self) -> Option<String> {
        let prev_text = self.decode(&self.tokens[self.prev_index..self.current_index]);
        let text = self.decode(&self.tokens[self.prev_index..]);
        self.prev_index = self.tokens.len();
        self.current_index = self.tokens.len();
        if text.len() > prev_text.len() && text.is_char_boundary(prev_text.len()) {
            Some(
                text[prev_text.len()..]
                    .trim_end_matches('\u{FFFD}')
                    .to_string(),
            )
            .filter(|s| !s.is_empty())
        } else {
            None
        }
    }
}

/// Finds stop sequences in streamed text without ever emitting part of one.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// Result of feeding text to a `StopMatcher`.
#[derive(Debug, PartialEq, Eq)]
pub struct StopFeed {
    /// Text safe to emit now.
    pub emit: String,
    /// A stop sequence matched; generation must end.
    pub stopped: bool,
}

impl StopMatcher {
    /// Watch for `stops` (empty strings ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Add generated text; returns what may be shown and whether a stop sequence matched.
    pub fn feed(&mut self, text: &str) -> StopFeed {
        if self.stops.is_empty() {
            return StopFeed {
                emit: text.to_string(),
                stopped: false,
            };
        }
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..pos].to_string();
            self.pending.clear();
            return StopFeed {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a prefix of some stop sequence.
        let mut hold = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.pending.ends_with(&stop[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopFeed {
            emit,
            stopped: false,
        }
    }

    /// Text held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Generated tokens to the text a client sees: whole characters, stop sequences cut out.
pub struct TextOut<'t> {
    detok: Detokenizer<'t>,
    stops: StopMatcher,
}

impl<'t> TextOut<'t> {
    /// Text for `tokenizer`'s tokens, ending before any of `stops`.
    pub fn new(tokenizer: &'t Tokenizer, stops: &[String]) -> Self {
        Self {
            detok: Detokenizer::new(tokenizer),
            stops: StopMatcher::new(stops),
        }
    }

    fn feed(&mut self, text: &str, emit: &mut dyn FnMut(&str)) -> bool {
        let fed = self.stops.feed(text);
        if !fed.emit.is_empty() {
            emit(&fed.emit);
        }
        fed.stopped
    }

    /// Add a token, emitting what became final; `true` when a stop sequence matched.
    pub fn push(&mut self, token: u32, emit: &mut dyn FnMut(&str)) -> bool {
        match self.detok.push(token) {
            Some(text) => self.feed(&text, emit),
            None => false,
        }
    }

    /// Generation ended for another reason: emit what is held back; `true` when that completes
    /// a stop sequence.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) -> bool {
        if let Some(rest) = self.detok.flush() {
            if self.feed(&rest, emit) {
                return true;
            }
        }
        let held = self.stops.finish();
        if !held.is_empty() {
            emit(&held);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tokenizer::tests::tiny_tokenizer;

    #[test]
    fn multibyte_characters_are_never_split() {
        let tok = tiny_tokenizer();
        let text = "héllo → 世界 🐝";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert!(
            ids.len() > text.chars().count(),
            "multi-byte chars span several tokens"
        );
        let mut d = Detokenizer::new(&tok);
        let mut out = String::new();
        for id in ids {
            if let Some(s) = d.push(id) {
                assert!(!s.contains('\u{FFFD}'), "emitted a broken character: {s:?}");
                out.push_str(&s);
            }
        }
        if let Some(s) = d.flush() {
            out.push_str(&s);
        }
        assert_eq!(out, text);
    }

    #[test]
    fn stop_sequence_split_across_feeds() {
        let mut m = StopMatcher::new(&["\n\nUser:".to_string()]);
        assert_eq!(
            m.feed("Hello"),
            StopFeed {
                emit: "Hello".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.feed(" there\n"),
            StopFeed {
                emit: " there".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.feed("\nUs"),
            StopFeed {
                emit: "".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.feed("er: hi"),
            StopFeed {
                emit: "".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_back_text_is_released_when_it_diverges() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.feed("the EN").emit, "the ");
        assert!(m.feed("D").stopped);
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.feed("the EN").emit, "the ");
        assert_eq!(m.feed("VOY").emit, "ENVOY");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn no_stops_passes_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.feed("abc").emit, "abc");
    }
}
