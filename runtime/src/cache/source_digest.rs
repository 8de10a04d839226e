//! SHA-256 of source texts, remembered: every launch through the cache needs its key, and
//! hashing a few kilobytes of source each time would cost more than the launch itself.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// How many source texts are remembered; past that the memo starts over.
const CAPACITY: usize = 256;

/// Digests of source texts, found by the address and length of the text and confirmed by
/// comparing the text itself: a byte comparison is an order of magnitude cheaper than hashing,
/// and a reused address with other contents is simply a miss.
#[derive(Default)]
pub(crate) struct SourceDigests {
    known: Mutex<HashMap<Place, Remembered>>,
}

/// Address and length of a source text.
type Place = (usize, usize);

/// A copy of the text, and its digest.
type Remembered = (Box<str>, [u8; 32]);

impl SourceDigests {
    /// The SHA-256 of `text`.
    pub(crate) fn get(&self, text: &str) -> [u8; 32] {
        let place: Place = (text.as_ptr() as usize, text.len());
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, digest)) = known.get(&place) {
            if **seen == *text {
                return *digest;
            }
        }
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if known.len() >= CAPACITY {
            known.clear();
        }
        known.insert(place, (text.into(), digest));
        digest
    }
}
