//! [`IncrementalDecoder`]: the text of generated tokens as they come.
//!
//! Decoding one token alone is wrong in two ways: a character of several UTF-8 bytes may be
//! split over tokens (byte-level BPE, byte fallback), and decoders treat the first token of a
//! text specially (SentencePiece-style ones drop its leading space). So the decoder keeps a
//! window of recent tokens: it decodes the window with and without the new tokens and emits the
//! difference, and holds text back while it ends in an incomplete character (U+FFFD).
//! Skipped special tokens never enter the window, so a decoder that treats the window's first
//! token specially sees the same first token as when decoding everything.
//!
//! One difference remains, on garbage only: a byte-fallback decoder (SentencePiece style)
//! writes a whole run of byte tokens as U+FFFD when the run is not UTF-8, so a stray byte can
//! turn bytes already written as valid text into U+FFFD when decoding everything; streaming
//! cannot take back what it wrote.

use super::Tokenizer;
use crate::Result;

/// Turns token ids into text one at a time; the concatenation of everything it returns equals
/// [`Tokenizer::decode`] of all the ids.
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Where the window starts: its tokens before `read` are context, already emitted.
    prefix: usize,
    /// The tokens before this have been emitted.
    read: usize,
}

impl<'a> IncrementalDecoder<'a> {
    pub(super) fn new(
        tokenizer: &'a Tokenizer,
        skip_special_tokens: bool,
    ) -> IncrementalDecoder<'a> {
        IncrementalDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds token `id`; returns the text it completes (often empty while a character is
    /// incomplete). An id past the vocabulary is an error, and is not added.
    pub fn push(&mut self, id: u32) -> Result<String> {
        // Decoding the id alone checks it before it joins the window.
        self.tokenizer.decode(&[id], false)?;
        if self.skip_special_tokens && self.tokenizer.is_special(id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let before = self.decode(self.prefix, self.read)?;
        let after = self.decode(self.prefix, self.ids.len())?;
        if after.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let Some(new) = after.strip_prefix(before.as_str()) else {
            // The new tokens changed the text of the window's context (no decoder of
            // Qwen2, Llama or Mistral does that): wait for the next token.
            return Ok(String::new());
        };
        let new = new.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(new)
    }

    /// The text still held back (an incomplete character, written as U+FFFD as `decode` would),
    /// ending the stream; the decoder starts afresh afterwards.
    pub fn finish(&mut self) -> Result<String> {
        let before = self.decode(self.prefix, self.read)?;
        let after = self.decode(self.prefix, self.ids.len())?;
        let rest = match after.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            None => after,
        };
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        Ok(rest)
    }

    fn decode(&self, from: usize, to: usize) -> Result<String> {
        if from == to {
            return Ok(String::new());
        }
        self.tokenizer
            .decode(&self.ids[from..to], self.skip_special_tokens)
    }
}
