//! Ed25519 keys for digests: the vendor's signing key (PKCS#8 PEM, as `openssl genpkey
//! -algorithm ed25519` writes it), the public keys customers verify with (SubjectPublicKeyInfo
//! PEM, as `openssl pkey -pubout` writes it), and writing and reading a signed digest file.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Digest, SignatureLine};

/// The DER prefix of every Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key's id: the first 8 bytes of the SHA-256 of its 32-byte public key, in hex. Every digest
/// names the id of the key that signed it, so several keys can be valid at once.
pub fn key_id(public_key: &[u8]) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    hex::encode(&hash.as_ref()[..8])
}

/// The vendor's key that signs digests.
pub struct SigningKey {
    key_id: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.key_id)
    }
}

impl SigningKey {
    /// Reads an unencrypted PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|error| format!("not a PKCS#8 PEM private key: {error}"))?;
        let pair = Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|error| format!("not an Ed25519 private key: {error}"))?;
        Ok(Self {
            key_id: key_id(pair.public_key().as_ref()),
            pair,
        })
    }

    /// A new random key (for tests and tools; operators make theirs with `openssl genpkey`).
    pub fn generate() -> Result<Self, String> {
        let pair = Ed25519KeyPair::generate()
            .map_err(|error| format!("cannot generate an Ed25519 key: {error}"))?;
        Ok(Self {
            key_id: key_id(pair.public_key().as_ref()),
            pair,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half as SubjectPublicKeyInfo PEM, what customers are given.
    pub fn public_key_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let body = BASE64.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
    }

    /// The digest file (before compression) and its signature in base64. `digest.key_id` must be
    /// this key's.
    pub fn sign(&self, digest: &Digest) -> Result<(Vec<u8>, String), String> {
        if digest.key_id != self.key_id {
            return Err(format!(
                "the digest names key {} but is signed with {}",
                digest.key_id, self.key_id
            ));
        }
        let signed = serde_json::to_string(digest).map_err(|error| error.to_string())?;
        let signature = BASE64.encode(self.pair.sign(signed.as_bytes()).as_ref());
        let line = SignatureLine {
            key_id: self.key_id.clone(),
            signature: signature.clone(),
        };
        let line = serde_json::to_string(&line).map_err(|error| error.to_string())?;
        Ok((format!("{signed}\n{line}\n").into_bytes(), signature))
    }
}

/// A public key as the admin API publishes it and the verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    pub key_id: String,
    /// SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
    /// Digests for periods ending from this time on may be signed with it (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    /// And up to this time, when the key was retired.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
}

/// The public keys a digest may be signed with.
#[derive(Debug, Clone)]
pub struct PublicKeys {
    keys: Vec<(PublishedKey, [u8; 32])>,
}

impl PublicKeys {
    /// Checks each key: its PEM is an Ed25519 public key and its id matches it.
    pub fn new(published: Vec<PublishedKey>) -> Result<Self, String> {
        let keys = published
            .into_iter()
            .map(|key| {
                let raw = raw_public_key(&key.public_key_pem)
                    .map_err(|error| format!("key {}: {error}", key.key_id))?;
                let id = key_id(&raw);
                if id != key.key_id {
                    return Err(format!(
                        "key {} has the id {id}, not the one it is listed under",
                        key.key_id
                    ));
                }
                Ok((key, raw))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// Reads and checks a digest file: its two lines, that a known key valid at the end of the
    /// digest's period signed the first, and that the first names that key.
    pub fn open(&self, file: &[u8]) -> Result<(Digest, SignatureLine), String> {
        let text = std::str::from_utf8(file).map_err(|_| "is not UTF-8 text".to_owned())?;
        let mut lines = text.strip_suffix('\n').unwrap_or(text).split('\n');
        let (Some(signed), Some(line), None) = (lines.next(), lines.next(), lines.next()) else {
            return Err("does not have exactly two lines".into());
        };
        let line: SignatureLine = serde_json::from_str(line)
            .map_err(|error| format!("has an unreadable signature line: {error}"))?;
        let Some((key, raw)) = self.keys.iter().find(|(key, _)| key.key_id == line.key_id) else {
            return Err(format!(
                "is signed by key {}, which is not a published key",
                line.key_id
            ));
        };
        let signature = BASE64
            .decode(&line.signature)
            .map_err(|_| "has a signature that is not base64".to_owned())?;
        UnparsedPublicKey::new(&ED25519, raw)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| {
                format!(
                    "has a signature by key {} that does not match its content",
                    key.key_id
                )
            })?;
        let digest: Digest = serde_json::from_str(signed)
            .map_err(|error| format!("is signed but not a digest: {error}"))?;
        if digest.key_id != line.key_id {
            return Err(format!(
                "names key {} but is signed by key {}",
                digest.key_id, line.key_id
            ));
        }
        let period_end = OffsetDateTime::parse(
            &digest.period_end,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| format!("has an unreadable period end {:?}", digest.period_end))?;
        let valid =
            key.valid_from <= period_end && key.valid_until.is_none_or(|until| period_end <= until);
        if !valid {
            return Err(format!(
                "is signed by key {}, which was not valid at {}",
                key.key_id, digest.period_end
            ));
        }
        Ok((digest, line))
    }
}

fn raw_public_key(pem: &str) -> Result<[u8; 32], String> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| format!("not a PEM public key: {error}"))?;
    der.as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
        .ok_or_else(|| "not an Ed25519 public key".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest::{DigestedObject, FORMAT, Link};
    use time::macros::datetime;

    /// A fixed test key (`openssl genpkey -algorithm ed25519`), never used outside tests.
    pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBfmidfOSUo8pI4koDuf43PfAGh9segQ7g5nCrHFiBuo
-----END PRIVATE KEY-----
";

    pub fn test_key() -> SigningKey {
        SigningKey::from_pem(TEST_KEY_PEM.as_bytes()).expect("the test key")
    }

    pub fn published(key: &SigningKey) -> PublishedKey {
        PublishedKey {
            key_id: key.key_id().to_owned(),
            public_key_pem: key.public_key_pem(),
            valid_from: datetime!(2026-01-01 0:00 UTC),
            valid_until: None,
        }
    }

    pub fn digest(key: &SigningKey, objects: usize) -> Digest {
        Digest {
            format: FORMAT.into(),
            tenant_id: "acme".into(),
            period_start: "2026-11-30T14:00:00Z".into(),
            period_end: "2026-11-30T15:00:00Z".into(),
            objects: (0..objects)
                .map(|n| DigestedObject {
                    key: format!("audit/acme/2026/11/30/14/acme_20261130T1400Z_0-{n}.jsonl.zst"),
                    sha256: "ab".repeat(32),
                    bytes: 100,
                    event_count: 2,
                    window_start: "2026-11-30T14:00:00Z".into(),
                    window_end: "2026-11-30T15:00:00Z".into(),
                    partition: 0,
                    first_offset: i64::try_from(n).unwrap_or(0),
                    last_offset: i64::try_from(n).unwrap_or(0),
                })
                .collect(),
            previous: Some(Link {
                key: "audit/acme/digests/2026/11/30/acme_20261130T130000Z_digest.json.gz".into(),
                signature: "c2lnbmF0dXJl".into(),
            }),
            chain_start: None,
            chain_end: None,
            key_id: key.key_id().to_owned(),
        }
    }

    #[test]
    fn a_signed_digest_opens_with_the_published_key_and_signing_is_deterministic() {
        let key = test_key();
        let (file, signature) = key.sign(&digest(&key, 2)).expect("sign");
        let (again, _) = key.sign(&digest(&key, 2)).expect("sign again");
        assert_eq!(file, again, "the same digest signs to the same bytes");
        let keys = PublicKeys::new(vec![published(&key)]).expect("keys");
        let (read, line) = keys.open(&file).expect("open");
        assert_eq!(read, digest(&key, 2));
        assert_eq!(line.signature, signature);
        assert_eq!(key.key_id().len(), 16);
    }

    #[test]
    fn a_digest_that_was_changed_or_signed_by_another_key_does_not_open() {
        let key = test_key();
        let keys = PublicKeys::new(vec![published(&key)]).expect("keys");
        let (file, _) = key.sign(&digest(&key, 2)).expect("sign");
        let text = String::from_utf8(file.clone()).expect("text");

        let altered = text.replacen("\"event_count\":2", "\"event_count\":3", 1);
        let error = keys.open(altered.as_bytes()).expect_err("altered");
        assert!(error.contains("does not match its content"), "{error}");

        let unknown = text.replace(key.key_id(), "0000000000000000");
        let error = keys.open(unknown.as_bytes()).expect_err("unknown key");
        assert!(error.contains("not a published key"), "{error}");

        let mut retired = published(&key);
        retired.valid_until = Some(datetime!(2026-11-30 12:00 UTC));
        let keys = PublicKeys::new(vec![retired]).expect("keys");
        let error = keys.open(&file).expect_err("retired key");
        assert!(
            error.contains("was not valid at 2026-11-30T15:00:00Z"),
            "{error}"
        );

        let error = keys.open(b"{}\n").expect_err("one line");
        assert!(error.contains("exactly two lines"), "{error}");
    }

    #[test]
    fn a_published_key_whose_id_does_not_match_it_is_refused() {
        let mut key = published(&test_key());
        key.key_id = "0123456789abcdef".into();
        let error = PublicKeys::new(vec![key]).expect_err("wrong id");
        assert!(error.contains("has the id"), "{error}");
    }
}
