//! A fast 64-bit digest of device state and guest memory, to check that a migrated VM equals
//! its source. Not cryptographic: it guards against mistakes, not adversaries.

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xbf58_476d_1ce4_e5b9;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 31;
    x = x.wrapping_mul(K1);
    x ^= x >> 29;
    x
}

/// Incremental digest: feed bytes in any split, get the same value as feeding them at once
/// only if the splits fall on multiples of 8 bytes (callers feed pages or whole buffers).
#[derive(Clone, Debug)]
pub struct Digest {
    state: u64,
    words: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            state: K0,
            words: 0,
        }
    }
}

impl Digest {
    /// A fresh digest.
    pub fn new() -> Self {
        Digest::default()
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let (words, tail) = bytes.as_chunks::<8>();
        for w in words {
            self.word(u64::from_le_bytes(*w));
        }
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            self.word(u64::from_le_bytes(last) ^ ((tail.len() as u64) << 56));
        }
    }

    fn word(&mut self, w: u64) {
        self.words = self.words.wrapping_add(1);
        self.state = mix(self.state ^ w.wrapping_add(self.words.wrapping_mul(K0))).rotate_left(23);
    }

    /// The digest of everything fed.
    pub fn finish(&self) -> u64 {
        mix(self.state ^ self.words)
    }
}

/// The digest of `bytes`.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut d = Digest::new();
    d.update(bytes);
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flipped_bit_changes_the_digest() {
        let a = vec![0u8; 4096];
        let mut b = a.clone();
        b[1234] = 1;
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn swapped_words_change_the_digest() {
        let a: Vec<u8> = (0..16).collect();
        let mut b = a.clone();
        b.rotate_left(8);
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn word_aligned_splits_give_the_same_digest() {
        let data: Vec<u8> = (0..=255).collect();
        let mut d = Digest::new();
        d.update(&data[..64]);
        d.update(&data[64..]);
        assert_eq!(d.finish(), digest(&data));
    }

    #[test]
    fn trailing_zeros_count() {
        assert_ne!(digest(&[1]), digest(&[1, 0]));
    }
}
