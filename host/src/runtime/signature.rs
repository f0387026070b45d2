//! Signed plugins: Ed25519 signatures over a component's sha256.
//!
//! When `[plugins] trusted_keys` names public keys, the host refuses to
//! compile any component (file, file watch, reload, upload, `sluice check`)
//! without a signature that one of those keys made over that component's
//! digest: a stolen admin token or a writable plugin folder is then not
//! enough to run code in the host. Checked before compiling, so untrusted
//! bytes never reach Cranelift.
//!
//! A signature is one line of text, kept in `<plugin>.wasm.sig` beside the
//! file, or sent with an upload in the `Sluice-Signature` header:
//!
//! ```text
//! sluice-signature-v1 ed25519 <key id> <sha256 hex> <signature, base64>
//! ```
//!
//! The signed message is `sluice-plugin-sha256:<sha256 hex>` (lowercase
//! hex): a fixed prefix, so a key used for Sluice cannot be tricked into
//! signing something else that verifies as a plugin. The key id (the first
//! 16 hex digits of the sha256 of the 32-byte public key) and the digest
//! are in the line only to say *why* a signature is refused: an untrusted
//! key, or a component that changed after it was signed. Keys are PEM
//! (PKCS#8 private, SPKI public), as `openssl genpkey -algorithm ed25519`
//! writes them, or `sluice plugin keygen`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The first word of a signature line: its format's version.
const FORMAT: &str = "sluice-signature-v1";
/// The prefix of the signed message.
const CONTEXT: &str = "sluice-plugin-sha256:";

/// Where a component's signature file is: `<path>.sig`.
pub fn signature_path(plugin: &Path) -> PathBuf {
    let mut name = plugin.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// A key's short id: the first 16 hex digits of the sha256 of its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn message(sha256_hex: &str) -> Vec<u8> {
    format!("{CONTEXT}{}", sha256_hex.to_ascii_lowercase()).into_bytes()
}

/// A parsed signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The id of the key that made it (see [`key_id`]).
    pub key_id: String,
    /// The sha256 (hex) of the component it signs.
    pub sha256: String,
    signature: ed25519_dalek::Signature,
}

impl Signature {
    /// Signs the component whose digest is `sha256_hex`.
    pub fn sign(key: &SigningKey, sha256_hex: &str) -> Self {
        Self { key_id: key_id(&key.verifying_key()), sha256: sha256_hex.to_ascii_lowercase(), signature: key.sign(&message(sha256_hex)) }
    }

    /// Reads a signature line (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let malformed = |why: &str| SignatureError::Malformed(why.to_owned());
        let words: Vec<&str> = text.split_whitespace().collect();
        let [format, algorithm, key_id, sha256, signature] = words[..] else {
            return Err(malformed(&format!("expected 5 words (`{FORMAT} ed25519 KEY-ID SHA256 SIGNATURE`), found {}", words.len())));
        };
        if format != FORMAT {
            return Err(malformed(&format!("it starts with `{}`, not `{FORMAT}`", clip(format))));
        }
        if algorithm != "ed25519" {
            return Err(malformed(&format!("algorithm `{}`: only ed25519 is supported", clip(algorithm))));
        }
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("the key id is not 16 hex digits"));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("the sha256 is not 64 hex digits"));
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| malformed("the signature is not base64"))?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| malformed(&format!("the signature is {} bytes, not 64", b.len())))?;
        Ok(Self {
            key_id: key_id.to_ascii_lowercase(),
            sha256: sha256.to_ascii_lowercase(),
            signature: ed25519_dalek::Signature::from_bytes(&bytes),
        })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signature = base64::engine::general_purpose::STANDARD.encode(self.signature.to_bytes());
        write!(f, "{FORMAT} ed25519 {} {} {signature}", self.key_id, self.sha256)
    }
}

/// Only a prefix of untrusted text goes into an error message.
fn clip(text: &str) -> String {
    text.chars().take(32).collect()
}

/// Why a component's signature is refused. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature where `[plugins] trusted_keys` requires one.
    #[error("it is not signed, and `[plugins] trusted_keys` requires a signature by one of the keys {trusted}: sign it with `sluice plugin sign --key KEY FILE` (which writes FILE.sig beside it), or send the signature line in the upload's `Sluice-Signature` header")]
    Missing {
        /// The trusted key ids, for the message.
        trusted: String,
    },
    /// The signature line does not parse.
    #[error("its signature cannot be read: {0}")]
    Malformed(String),
    /// The signature is for another digest than the component's.
    #[error("its signature is for sha256 {signed}, but the component has sha256 {actual}: it changed after it was signed (or the .sig is another version's); sign this version")]
    ChangedAfterSigning {
        /// The digest the signature covers.
        signed: String,
        /// The component's digest.
        actual: String,
    },
    /// Signed, but by a key the host does not trust.
    #[error("it is signed by key {key_id}, which is not among `[plugins] trusted_keys` ({trusted})")]
    UntrustedKey {
        /// The id of the key the signature names.
        key_id: String,
        /// The trusted key ids, for the message.
        trusted: String,
    },
    /// The signature does not verify with the key it names.
    #[error("its signature does not verify with the trusted key {key_id}: the signature line was altered")]
    Invalid {
        /// The id of the key the signature names.
        key_id: String,
    },
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("cannot read key {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not an Ed25519 key in the expected PEM format.
    #[error("key {} is not an Ed25519 {what} key in PEM ({detail}); make one with `sluice plugin keygen NAME` or `openssl genpkey -algorithm ed25519`", path.display())]
    Parse {
        /// The key file.
        path: PathBuf,
        /// `public` or `private`.
        what: &'static str,
        /// The parser's reason.
        detail: String,
    },
    /// `keygen` cannot write a key file.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `keygen` would overwrite a key file.
    #[error("{} exists already: keygen never overwrites a key", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
}

/// The public keys a host accepts plugin signatures from.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// Reads each public key file (PEM, SPKI).
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let keys = paths
            .iter()
            .map(|path| {
                let key = read_public_key(path)?;
                Ok((key_id(&key), key))
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(Self { keys })
    }

    /// Trusts `keys`, already read.
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self { keys: keys.into_iter().map(|k| (key_id(&k), k)).collect() }
    }

    /// The trusted key ids, for messages.
    pub fn ids(&self) -> String {
        self.keys.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Accepts `signature` (a signature line) for the component with digest
    /// `sha256_hex`, and returns the id of the key that made it.
    pub fn verify(&self, sha256_hex: &str, signature: Option<&str>) -> Result<String, SignatureError> {
        let Some(text) = signature else { return Err(SignatureError::Missing { trusted: self.ids() }) };
        let signature = Signature::parse(text)?;
        if !signature.sha256.eq_ignore_ascii_case(sha256_hex) {
            return Err(SignatureError::ChangedAfterSigning { signed: signature.sha256, actual: sha256_hex.to_ascii_lowercase() });
        }
        let Some((id, key)) = self.keys.iter().find(|(id, _)| *id == signature.key_id) else {
            return Err(SignatureError::UntrustedKey { key_id: signature.key_id, trusted: self.ids() });
        };
        key.verify_strict(&message(sha256_hex), &signature.signature).map_err(|_| SignatureError::Invalid { key_id: id.clone() })?;
        Ok(id.clone())
    }
}

/// Reads an Ed25519 public key file (PEM, SPKI).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| KeyError::Parse { path: path.to_owned(), what: "public", detail: e.to_string() })
}

/// Reads an Ed25519 private key file (PEM, PKCS#8), for signing.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    // The error names the file and the format only: never a byte of the key.
    SigningKey::from_pkcs8_pem(&text).map_err(|_| KeyError::Parse {
        path: path.to_owned(),
        what: "private",
        detail: "PKCS#8 expected".into(),
    })
}

/// Writes a new key pair: `<stem>.key` (private, PKCS#8 PEM, readable by
/// the owner only) and `<stem>.pub` (public, SPKI PEM). Returns the key id.
pub fn generate(stem: &Path) -> Result<(String, PathBuf, PathBuf), KeyError> {
    let private = stem.with_extension("key");
    let public = stem.with_extension("pub");
    for path in [&private, &public] {
        if path.exists() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let write_failed = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| KeyError::Write { path, source: e }
    };
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Write { path: private.clone(), source: std::io::Error::other(e.to_string()) })?;
    write_private(&private, pem.as_bytes()).map_err(write_failed(&private))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Write { path: public.clone(), source: std::io::Error::other(e.to_string()) })?;
    std::fs::write(&public, public_pem).map_err(write_failed(&public))?;
    Ok((key_id(&key.verifying_key()), private, public))
}

/// Creates the file with mode 0600 from the start: the key is never
/// readable by others, not even between a write and a chmod.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const OTHER: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    #[test]
    fn a_signature_by_a_trusted_key_is_accepted_and_names_the_key() {
        let trusted = TrustedKeys::from_keys([key(1).verifying_key(), key(2).verifying_key()]);
        let line = Signature::sign(&key(2), DIGEST).to_string();
        assert_eq!(trusted.verify(DIGEST, Some(&line)), Ok(key_id(&key(2).verifying_key())));
        // Upper-case hex and surrounding white space are the same signature.
        assert!(trusted.verify(&DIGEST.to_uppercase(), Some(&format!("  {line}\n"))).is_ok());
    }

    #[test]
    fn each_refusal_says_why() {
        let trusted = TrustedKeys::from_keys([key(1).verifying_key()]);
        assert!(matches!(trusted.verify(DIGEST, None), Err(SignatureError::Missing { .. })));
        let by_stranger = Signature::sign(&key(9), DIGEST).to_string();
        assert_eq!(
            trusted.verify(DIGEST, Some(&by_stranger)),
            Err(SignatureError::UntrustedKey { key_id: key_id(&key(9).verifying_key()), trusted: trusted.ids() })
        );
        // The component changed after signing.
        let line = Signature::sign(&key(1), DIGEST).to_string();
        assert!(matches!(trusted.verify(OTHER, Some(&line)), Err(SignatureError::ChangedAfterSigning { .. })));
        // The line's digest edited to match another component: the
        // signature no longer verifies.
        let forged = line.replace(DIGEST, OTHER);
        assert_eq!(trusted.verify(OTHER, Some(&forged)), Err(SignatureError::Invalid { key_id: key_id(&key(1).verifying_key()) }));
        // A stranger's signature relabelled with the trusted key's id.
        let relabelled = by_stranger.replace(&key_id(&key(9).verifying_key()), &key_id(&key(1).verifying_key()));
        assert!(matches!(trusted.verify(DIGEST, Some(&relabelled)), Err(SignatureError::Invalid { .. })));
    }

    #[test]
    fn malformed_lines_are_refused_with_the_reason() -> Result<(), String> {
        let trusted = TrustedKeys::from_keys([key(1).verifying_key()]);
        for (line, why) in [
            ("", "expected 5 words"),
            ("sluice-signature-v2 ed25519 0011223344556677 00 AA==", "not `sluice-signature-v1`"),
            ("sluice-signature-v1 rsa 0011223344556677 00 AA==", "only ed25519"),
            ("sluice-signature-v1 ed25519 zz 00 AA==", "key id"),
            (&format!("sluice-signature-v1 ed25519 0011223344556677 {DIGEST} ***"), "not base64"),
            (&format!("sluice-signature-v1 ed25519 0011223344556677 {DIGEST} AAAA"), "3 bytes, not 64"),
        ] {
            match trusted.verify(DIGEST, Some(line)) {
                Err(SignatureError::Malformed(message)) => assert!(message.contains(why), "{line:?}: {message}"),
                other => return Err(format!("{line:?}: {other:?}")),
            }
        }
        Ok(())
    }

    #[test]
    fn keygen_writes_a_pair_that_reads_back_and_never_overwrites() -> Result<(), KeyError> {
        let dir = std::env::temp_dir().join(format!("sluice-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| KeyError::Write { path: dir.clone(), source })?;
        let stem = dir.join("release");
        let (id, private, public) = generate(&stem)?;
        let signing = read_signing_key(&private)?;
        let verifying = read_public_key(&public)?;
        assert_eq!(key_id(&verifying), id);
        assert_eq!(signing.verifying_key(), verifying);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).map_err(|source| KeyError::Read { path: private.clone(), source })?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's only");
        assert!(matches!(generate(&stem), Err(KeyError::Exists { .. })));
        let line = Signature::sign(&signing, DIGEST).to_string();
        assert_eq!(TrustedKeys::load(&[public])?.verify(DIGEST, Some(&line)), Ok(id));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
