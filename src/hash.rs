//! Block hashing: the SHA-256 of a block's bytes, as 64 lowercase hex chars,
//! is the block's name everywhere (BlockStore keys, `blockHashList`, index.txt).

use sha2::{Digest, Sha256};

/// Length of a block hash in hex characters.
pub const HASH_HEX_LEN: usize = 64;

/// The single-element hash list that marks a deleted file (SPEC §4).
pub const TOMBSTONE_HASH: &str = "0";

/// Returns the lowercase hex SHA-256 of `data`.
pub fn hash_block(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Whether `hash` is a well-formed block hash: exactly 64 lowercase hex chars.
pub fn is_valid_hash(hash: &str) -> bool {
    hash.len() == HASH_HEX_LEN && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a `blockHashList` marks a deleted file.
pub fn is_tombstone(hashes: &[String]) -> bool {
    hashes.len() == 1 && hashes[0] == TOMBSTONE_HASH
}

/// The `blockHashList` of a deleted file.
pub fn tombstone() -> Vec<String> {
    vec![TOMBSTONE_HASH.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            hash_block(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash_block(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn validates_hashes() {
        assert!(is_valid_hash(&hash_block(b"x")));
        assert!(!is_valid_hash("0"));
        assert!(!is_valid_hash(&hash_block(b"x").to_uppercase()));
        assert!(!is_valid_hash(&format!("{}z", &hash_block(b"x")[..63])));
        assert!(!is_valid_hash(&format!("{}0", hash_block(b"x"))));
    }

    #[test]
    fn tombstones() {
        assert!(is_tombstone(&tombstone()));
        assert!(!is_tombstone(&[]));
        assert!(!is_tombstone(&[hash_block(b"")]));
    }
}
