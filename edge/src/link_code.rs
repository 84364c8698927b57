//! One-time device link codes: what `missive link new` prints and the new device types.

use rand::Rng;

/// Letters and digits that cannot be mistaken for one another (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// Characters of a code (two groups of five): 31^10, about 2^49, against a few guesses per
/// address per hour within the code's few minutes of life.
const LEN: usize = 10;

/// A fresh random code, as `ABCDE-FGHJK`.
pub fn generate() -> String {
    let mut rng = rand::thread_rng();
    let mut code = String::with_capacity(LEN + 1);
    for i in 0..LEN {
        if i == LEN / 2 {
            code.push('-');
        }
        code.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_readable_and_differ() {
        let a = generate();
        assert_eq!(a.len(), 11);
        assert_eq!(&a[5..6], "-");
        assert!(a.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
        assert_ne!(a, generate());
    }
}
