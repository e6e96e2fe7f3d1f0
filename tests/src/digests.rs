//! Signing keys made as an operator makes them, the public keys file customers are given, and
//! the customer's verifier run as a process.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::digest::signing::{PublishedKey, SigningKey};
use time::OffsetDateTime;
use time::macros::datetime;

/// A new Ed25519 key written by `openssl genpkey` to `dir/{name}.pem`, and its path.
pub fn new_key(dir: &Path, name: &str) -> (SigningKey, PathBuf) {
    let path = dir.join(format!("{name}.pem"));
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&path)
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl genpkey");
    let key =
        SigningKey::from_pem(&std::fs::read(&path).expect("key file")).expect("an Ed25519 key");
    (key, path)
}

/// The batcher flags that turn digests on, signed with the key at `key_file`, for periods of
/// `period` closed `grace` after their end (durations as the flags take them: `3s`, `500ms`).
pub fn batcher_flags(key_file: &Path, period: &str, grace: &str) -> Vec<String> {
    vec![
        "--digest-signing-key-file".into(),
        key_file.to_string_lossy().into_owned(),
        "--digest-period".into(),
        period.into(),
        "--digest-grace".into(),
        grace.into(),
    ]
}

/// `key`'s public half as published, valid since the start of 2026.
pub fn published(key: &SigningKey) -> PublishedKey {
    PublishedKey {
        key_id: key.key_id().into(),
        public_key_pem: key.public_key_pem(),
        valid_from: datetime!(2026-01-01 0:00 UTC),
        valid_until: None,
    }
}

/// The public keys file (as the admin API serves it) listing `key`, written to `dir/keys.json`.
pub fn keys_file(dir: &Path, key: &SigningKey) -> PathBuf {
    let path = dir.join("keys.json");
    std::fs::write(
        &path,
        serde_json::json!({ "keys": [published(key)] }).to_string(),
    )
    .expect("keys file");
    path
}

/// Runs `activity-logs-verify` for `tenant`'s digests of `[from, to)` in `bucket` under
/// `prefix`, against the local S3 server; returns its exit code and output.
pub fn verify(
    bucket: &str,
    prefix: &str,
    tenant: &str,
    (from, to): (OffsetDateTime, OffsetDateTime),
    keys_file: &Path,
) -> (i32, String) {
    let output = Command::new(crate::process::binary("activity-logs-verify"))
        .args(["--bucket", bucket, "--prefix", prefix, "--tenant", tenant])
        .args(["--from", &common::digest::timestamp(from)])
        .args(["--to", &common::digest::timestamp(to)])
        .arg("--public-keys")
        .arg(keys_file)
        .args(crate::fixtures::aws_endpoint_flags(
            &crate::fixtures::moto_endpoint(),
        ))
        .args(["--aws-region", crate::fixtures::REGION])
        .output()
        .expect("run the verifier");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}
