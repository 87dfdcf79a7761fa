//! NATS NKEY user seeds (the `SU…` text `nk -gen user` writes): the Ed25519 seed they carry,
//! used to answer a NATS server's nonce with the user's public key and a signature (the
//! `nkey` and `sig` fields of CONNECT).
//!
//! The text is base32 (RFC 4648, no padding) of two prefix bytes, the 32-byte seed and a
//! CRC-16/XMODEM of those, little-endian. The prefix bytes hold the seed marker (18 << 3) and
//! the key type (user: 20 << 3) split over 5 + 3 bits, so the text starts with "SU".

use base64::Engine;
use data_encoding::BASE32_NOPAD;
use ring::signature::{Ed25519KeyPair, KeyPair};

const PREFIX_SEED: u8 = 18 << 3;
const PREFIX_USER: u8 = 20 << 3;

/// Why a seed was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NkeyError {
    #[error("not base32 text")]
    Encoding,
    #[error("not an NKEY seed (wrong length)")]
    Length,
    #[error("this is a public key (\"U…\"); the seed file needs the user seed (\"SU…\")")]
    PublicKey,
    #[error("checksum does not match (a typo or a cut-off seed?)")]
    Checksum,
    #[error("not a user seed (a user seed starts with \"SU\")")]
    NotUser,
}

/// A user's NKEY seed. Its `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSeed([u8; 32]);

impl std::fmt::Debug for UserSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserSeed(..)")
    }
}

impl UserSeed {
    /// Reads a seed as `nk` writes it (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, NkeyError> {
        let raw = BASE32_NOPAD.decode(text.trim().as_bytes()).map_err(|_| NkeyError::Encoding)?;
        if raw.len() == 1 + 32 + 2 && raw[0] == PREFIX_USER {
            return Err(NkeyError::PublicKey);
        }
        if raw.len() != 2 + 32 + 2 {
            return Err(NkeyError::Length);
        }
        let (body, crc) = raw.split_at(raw.len() - 2);
        if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
            return Err(NkeyError::Checksum);
        }
        let kind = (body[0] & 0x07) << 5 | body[1] >> 3;
        if body[0] & 0xf8 != PREFIX_SEED || kind != PREFIX_USER {
            return Err(NkeyError::NotUser);
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&body[2..]);
        Ok(UserSeed(seed))
    }

    fn key_pair(&self) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&self.0)
            .unwrap_or_else(|_| unreachable!("any 32 bytes are a seed"))
    }

    /// The public key in NKEY text (`U…`), as the server's configuration names the user.
    pub fn public_key(&self) -> String {
        let mut raw = vec![PREFIX_USER];
        raw.extend_from_slice(self.key_pair().public_key().as_ref());
        raw.extend_from_slice(&crc16(&raw).to_le_bytes());
        BASE32_NOPAD.encode(&raw)
    }

    /// The signature of the server's nonce, base64url without padding.
    pub fn sign(&self, nonce: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key_pair().sign(nonce))
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum of NKEY text.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed text for `seed` (as `nk -gen user` would write it).
    fn seed_text(seed: [u8; 32]) -> String {
        let mut raw = vec![PREFIX_SEED | PREFIX_USER >> 5, (PREFIX_USER & 31) << 3];
        raw.extend_from_slice(&seed);
        raw.extend_from_slice(&crc16(&raw).to_le_bytes());
        BASE32_NOPAD.encode(&raw)
    }

    #[test]
    fn crc16_is_xmodem() {
        // The CRC catalogue's check value for CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn a_user_seed_reads_back_signs_and_names_its_public_key() {
        let text = seed_text([7; 32]);
        assert!(text.starts_with("SU"), "{text}");
        let seed = UserSeed::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(seed, UserSeed([7; 32]));
        let public = seed.public_key();
        assert!(public.starts_with('U') && public.len() == 56, "{public}");
        let raw = BASE32_NOPAD.decode(public.as_bytes()).unwrap();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &raw[1..33]);
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seed.sign(b"nonce")).unwrap();
        key.verify(b"nonce", &sig).expect("the signature verifies with the public key");
        assert_eq!(format!("{seed:?}"), "UserSeed(..)");
    }

    #[test]
    fn bad_seeds_say_why() {
        let text = seed_text([7; 32]);
        assert_eq!(UserSeed::parse("not base32!"), Err(NkeyError::Encoding));
        assert_eq!(UserSeed::parse(&text[..48]), Err(NkeyError::Length));
        let typo = format!("{}{}", &text[..10], if &text[10..11] == "A" { "B" } else { "A" }) + &text[11..];
        assert_eq!(UserSeed::parse(&typo), Err(NkeyError::Checksum));
        let mut public = vec![PREFIX_USER, 0];
        public.extend_from_slice(&[7; 32]);
        public.extend_from_slice(&crc16(&public).to_le_bytes());
        assert_eq!(UserSeed::parse(&BASE32_NOPAD.encode(&public)), Err(NkeyError::NotUser));
        let seed = UserSeed::parse(&text).unwrap();
        assert_eq!(UserSeed::parse(&seed.public_key()), Err(NkeyError::PublicKey));
    }
}
