//! The Mosquitto password file: one `user:hash` line per user, `#` comments and blank lines ignored.
//!
//! Besides Mosquitto's own hashes (`$7$` PBKDF2-HMAC-SHA512 from Mosquitto 2, `$6$` salted SHA-512
//! from older versions) a line may hold an RFC 5803 `SCRAM-SHA-256$` verifier (PostgreSQL's format),
//! which serves both plain CONNECT passwords and the SCRAM-SHA-256 Authentication Method, so one file
//! can move users to SCRAM without a second credential store.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::scram::{self, ScramCredential, ScramCredentials};

/// What mosquitto_passwd writes for `$7$`: 101 iterations and a 12-byte salt.
const MOSQUITTO_ITERATIONS: u32 = 101;
const MOSQUITTO_SALT_LEN: usize = 12;

/// Bounds an iteration count read from the file, so a hostile or mistyped file cannot make every
/// login hang the broker.
const MAX_ITERATIONS: u32 = 10_000_000;

/// The origin named in errors from [`PasswordFile::parse`], which has no file.
const TEXT_ORIGIN: &str = "<password text>";

const RNG_FAILED: &str = "the operating system's random number generator failed";

/// An error loading or editing a password file. Messages name the file and, for a bad line, its
/// 1-based number; they never quote a hash.
#[derive(Debug, Error)]
pub enum PasswordFileError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {problem}", .path.display())]
    Line { path: PathBuf, line: usize, problem: LineError },
    #[error("invalid user name {0:?}: empty, starts with '#', or contains ':' or a control character")]
    InvalidUserName(String),
    #[error("invalid password entry: {0}")]
    InvalidEntry(LineError),
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    #[error("missing ':' between user name and password hash")]
    MissingSeparator,
    #[error("empty user name")]
    EmptyUser,
    #[error("user {user:?} already appears on line {first_line}")]
    DuplicateUser { user: String, first_line: usize },
    #[error("unsupported password hash (expected $7$, $6$ or SCRAM-SHA-256$)")]
    UnknownFormat,
    #[error("malformed hash: expected {0}")]
    Malformed(&'static str),
    #[error("iteration count must be a number from 1 to {MAX_ITERATIONS}")]
    Iterations,
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("{field} must be {expected} bytes, not {found}")]
    Length { field: &'static str, expected: usize, found: usize },
    #[error("empty salt")]
    EmptySalt,
}

/// The users of a password file and their password hashes.
pub struct PasswordFile {
    users: HashMap<String, Entry>,
}

/// Hashes are password equivalents for offline guessing: Debug shows only how many users there are.
impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile").field("users", &self.users.len()).finish()
    }
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = fs::read_to_string(path).map_err(|source| io_error(path, source))?;
        parse_text(path, &text)
    }

    /// Parses password file text; errors name the origin `<password text>`.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        parse_text(Path::new(TEXT_ORIGIN), text)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a plain password (MQTT CONNECT). Unknown users still cost one default `$7$`
    /// derivation, so timing does not tell them from known ones with default settings.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(entry) => entry.verify(password),
            None => {
                std::hint::black_box(pbkdf2_sha512(password, &[0; MOSQUITTO_SALT_LEN], MOSQUITTO_ITERATIONS));
                false
            }
        }
    }

    /// The user's SCRAM-SHA-256 verifier, if the user's line is a `SCRAM-SHA-256$` entry.
    pub fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        match self.users.get(user)? {
            Entry::Scram(credential) => Some(credential.clone()),
            Entry::Pbkdf2Sha512 { .. } | Entry::Sha512 { .. } => None,
        }
    }
}

impl ScramCredentials for PasswordFile {
    fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        PasswordFile::scram_credential(self, user)
    }
}

/// A new `$7$` entry (the part after `user:`), as mosquitto_passwd writes it.
///
/// # Panics
/// If the operating system's random number generator fails.
pub fn hash_password(password: &[u8]) -> String {
    let salt: [u8; MOSQUITTO_SALT_LEN] = scram::random_bytes().expect(RNG_FAILED);
    let hash = pbkdf2_sha512(password, &salt, MOSQUITTO_ITERATIONS);
    format!("$7${MOSQUITTO_ITERATIONS}${}${}", BASE64.encode(salt), BASE64.encode(hash))
}

/// A new `SCRAM-SHA-256$` entry (the part after `user:`) in the RFC 5803 format.
///
/// # Panics
/// If the operating system's random number generator fails.
pub fn scram_verifier(password: &[u8]) -> String {
    let salt: [u8; scram::SALT_LEN] = scram::random_bytes().expect(RNG_FAILED);
    let credential = ScramCredential::from_password(password, salt.to_vec(), scram::DEFAULT_ITERATIONS);
    format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        credential.iterations,
        BASE64.encode(&credential.salt),
        BASE64.encode(credential.stored_key),
        BASE64.encode(credential.server_key)
    )
}

/// Adds `user:entry`, or replaces the user's line in place, creating the file if it is missing.
/// Every other line is kept as it was. `entry` must be a hash this module accepts.
pub fn set_user(path: &Path, user: &str, entry: &str) -> Result<(), PasswordFileError> {
    check_user_name(user)?;
    Entry::parse(entry).map_err(PasswordFileError::InvalidEntry)?;
    let text = match fs::read_to_string(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        other => other.map_err(|source| io_error(path, source))?,
    };
    write_atomically(path, &with_user(&text, user, &format!("{user}:{entry}")))
}

/// Removes the user's line, keeping every other line as it was; `false` if the user was absent.
pub fn delete_user(path: &Path, user: &str) -> Result<bool, PasswordFileError> {
    check_user_name(user)?;
    let text = match fs::read_to_string(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        other => other.map_err(|source| io_error(path, source))?,
    };
    let kept: String = text.split_inclusive('\n').filter(|line| line_user(line) != Some(user)).collect();
    if kept.len() == text.len() {
        return Ok(false);
    }
    write_atomically(path, &kept)?;
    Ok(true)
}

/// One user's password hash.
enum Entry {
    /// `$7$iterations$salt$hash`: Mosquitto 2, PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 { iterations: u32, salt: Vec<u8>, hash: [u8; 64] },
    /// `$6$salt$hash`: Mosquitto 1.x, SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: [u8; 64] },
    /// `SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey` (RFC 5803).
    Scram(ScramCredential),
}

impl Entry {
    fn parse(hash: &str) -> Result<Entry, LineError> {
        if let Some(fields) = hash.strip_prefix("$7$") {
            parse_pbkdf2(fields)
        } else if let Some(fields) = hash.strip_prefix("$6$") {
            parse_sha512(fields)
        } else if let Some(fields) = hash.strip_prefix("SCRAM-SHA-256$") {
            parse_scram(fields)
        } else {
            Err(LineError::UnknownFormat)
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Entry::Pbkdf2Sha512 { iterations, salt, hash } => {
                pbkdf2_sha512(password, salt, *iterations).ct_eq(hash).into()
            }
            Entry::Sha512 { salt, hash } => {
                let computed: [u8; 64] =
                    Sha512::new().chain_update(password).chain_update(salt).finalize().into();
                computed.ct_eq(hash).into()
            }
            Entry::Scram(credential) => credential.matches_password(password),
        }
    }
}

fn parse_pbkdf2(fields: &str) -> Result<Entry, LineError> {
    let &[iterations, salt, hash] = fields.split('$').collect::<Vec<_>>().as_slice() else {
        return Err(LineError::Malformed("$7$<iterations>$<salt>$<hash>"));
    };
    Ok(Entry::Pbkdf2Sha512 {
        iterations: parse_iterations(iterations)?,
        salt: decode_salt(salt)?,
        hash: decode_fixed(hash, "hash")?,
    })
}

fn parse_sha512(fields: &str) -> Result<Entry, LineError> {
    let &[salt, hash] = fields.split('$').collect::<Vec<_>>().as_slice() else {
        return Err(LineError::Malformed("$6$<salt>$<hash>"));
    };
    Ok(Entry::Sha512 { salt: decode_salt(salt)?, hash: decode_fixed(hash, "hash")? })
}

fn parse_scram(fields: &str) -> Result<Entry, LineError> {
    const SHAPE: &str = "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";
    let (params, keys) = fields.split_once('$').ok_or(LineError::Malformed(SHAPE))?;
    let (iterations, salt) = params.split_once(':').ok_or(LineError::Malformed(SHAPE))?;
    let (stored_key, server_key) = keys.split_once(':').ok_or(LineError::Malformed(SHAPE))?;
    Ok(Entry::Scram(ScramCredential {
        iterations: parse_iterations(iterations)?,
        salt: decode_salt(salt)?,
        stored_key: decode_fixed(stored_key, "StoredKey")?,
        server_key: decode_fixed(server_key, "ServerKey")?,
    }))
}

/// Only plain decimal digits: `str::parse` would also take a leading `+`.
fn parse_iterations(text: &str) -> Result<u32, LineError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LineError::Iterations);
    }
    match text.parse() {
        Ok(iterations @ 1..=MAX_ITERATIONS) => Ok(iterations),
        _ => Err(LineError::Iterations),
    }
}

fn decode_salt(text: &str) -> Result<Vec<u8>, LineError> {
    let salt = BASE64.decode(text).map_err(|_| LineError::Base64("salt"))?;
    if salt.is_empty() {
        return Err(LineError::EmptySalt);
    }
    Ok(salt)
}

fn decode_fixed<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], LineError> {
    let bytes = BASE64.decode(text).map_err(|_| LineError::Base64(field))?;
    let found = bytes.len();
    bytes.try_into().map_err(|_| LineError::Length { field, expected: N, found })
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
    hash
}

fn parse_text(path: &Path, text: &str) -> Result<PasswordFile, PasswordFileError> {
    let mut users = HashMap::new();
    let mut first_lines = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line_error = |problem| PasswordFileError::Line { path: path.to_owned(), line: number, problem };
        let Some((user, entry)) = parse_line(line).map_err(line_error)? else {
            continue;
        };
        if let Some(&first_line) = first_lines.get(user) {
            // Refused rather than guessed at: which of two lines should win is not obvious.
            return Err(line_error(LineError::DuplicateUser { user: user.to_owned(), first_line }));
        }
        first_lines.insert(user, number);
        users.insert(user.to_owned(), entry);
    }
    Ok(PasswordFile { users })
}

/// A user and entry, or `None` for a blank or comment line. The user name is everything before the
/// first `:`; trailing whitespace (such as a CR) after the hash is ignored.
fn parse_line(line: &str) -> Result<Option<(&str, Entry)>, LineError> {
    if is_ignored(line) {
        return Ok(None);
    }
    let (user, hash) = line.split_once(':').ok_or(LineError::MissingSeparator)?;
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    Ok(Some((user, Entry::parse(hash.trim_end())?)))
}

fn is_ignored(line: &str) -> bool {
    let line = line.trim_start();
    line.is_empty() || line.starts_with('#')
}

/// The user a line is for, if it is a `user:...` line; used to edit files line by line.
fn line_user(line: &str) -> Option<&str> {
    if is_ignored(line) {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

/// `text` with the user's line replaced by `new_line` (keeping the old line ending; later duplicates
/// dropped) or, if the user has no line, with `new_line` appended.
fn with_user(text: &str, user: &str, new_line: &str) -> String {
    let mut out = String::with_capacity(text.len() + new_line.len() + 1);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        if line_user(line) != Some(user) {
            out.push_str(line);
        } else if !replaced {
            out.push_str(new_line);
            out.push_str(&line[line.trim_end_matches(['\r', '\n']).len()..]);
            replaced = true;
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(new_line);
        out.push('\n');
    }
    out
}

/// A name that reads back as the same user: no `:` (the separator), no line breaks or other control
/// characters, and no leading `#` (the line would become a comment).
fn check_user_name(user: &str) -> Result<(), PasswordFileError> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) || is_ignored(user) {
        return Err(PasswordFileError::InvalidUserName(user.to_owned()));
    }
    Ok(())
}

/// Replaces `path` with `contents` so that readers (the broker reloading) see either the old or the
/// new file, never half of one: a private temporary file in the same directory, fsync, rename, and
/// fsync of the directory so the rename itself survives a crash.
fn write_atomically(path: &Path, contents: &str) -> Result<(), PasswordFileError> {
    let temp = temp_path(path).map_err(|source| io_error(path, source))?;
    let result = write_synced(&temp, contents).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: the write error is the one worth reporting.
        let _ = fs::remove_file(&temp);
    }
    result.and_then(|()| sync_dir(path)).map_err(|source| io_error(path, source))
}

/// A fresh name beside `path`, random so concurrent or crashed writers never collide.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let suffix =
        u64::from_ne_bytes(scram::random_bytes().map_err(|error| io::Error::other(error.to_string()))?);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{suffix:016x}.tmp"));
    Ok(path.with_file_name(temp_name))
}

fn write_synced(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = create_private(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Creates a new file readable by its owner only: it holds password hashes.
#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing here; the rename is as durable as the platform makes it.
#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> PasswordFileError {
    PasswordFileError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vectors for the password `secret`, made once with Python 3.11's hashlib/hmac (independent
    // of this code) from random salts:
    //   $7$: hashlib.pbkdf2_hmac('sha512', b'secret', salt, 101)          (12-byte salt)
    //   $6$: hashlib.sha512(b'secret' + salt).digest()                    (12-byte salt)
    //   SCRAM: sp = hashlib.pbkdf2_hmac('sha256', b'secret', salt, 4096)  (16-byte salt)
    //          StoredKey = sha256(hmac(sp, b"Client Key")), ServerKey = hmac(sp, b"Server Key")
    // all base64-encoded with padding, as mosquitto_passwd and PostgreSQL write them.
    const PBKDF2_ENTRY: &str = "$7$101$tfk+o80EJmeRiPII$UDqMw9DhY2JfDHU+ei5jqHm/ZCdkKrcIf/5MpNsVFSax/IZy+XgtX8oqzcRrEG3iNS9QkRQkNaPHPtqNccuDfw==";
    const SHA512_ENTRY: &str = "$6$Wzy3brXVrAAbH1y/$/Sjemr3udogQpKdzt8a6Aq7W3LCiUDsuJyTk2gkuq6o4fp9LcfVNI6WUAtL456PoHfZ/SmBJkPJPqu6VxNfXrw==";
    const SCRAM_ENTRY: &str = "SCRAM-SHA-256$4096:oQ2mNAAOiCS/kYMNwfkuEA==$br3O5htznhs1Ts4kLG2L8GPwb2owPhsS545grFIWMZU=:RZGGmp47fCxp26n+68H2mL1EWNC0n8qHYUlIAg3EMdU=";

    fn file() -> PasswordFile {
        let text = format!(
            "# users\n\nalice:{PBKDF2_ENTRY}\n  # indented\nbob:{SHA512_ENTRY}\r\ncarol:{SCRAM_ENTRY}\n"
        );
        PasswordFile::parse(&text).unwrap()
    }

    /// The problem and 1-based line number of a parse error.
    fn line_error(text: &str) -> (usize, LineError) {
        match PasswordFile::parse(text) {
            Err(PasswordFileError::Line { line, problem, .. }) => (line, problem),
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn verifies_every_hash_kind() {
        let file = file();
        assert_eq!(file.len(), 3);
        for user in ["alice", "bob", "carol"] {
            assert!(file.verify(user, b"secret"), "{user}");
            assert!(!file.verify(user, b"Secret"), "{user}");
            assert!(!file.verify(user, b""), "{user}");
        }
    }

    #[test]
    fn unknown_user_is_refused() {
        assert!(!file().verify("mallory", b"secret"));
        assert!(!file().verify("", b"secret"));
        assert!(!PasswordFile::parse("").unwrap().verify("alice", b"secret"));
    }

    #[test]
    fn scram_credential_only_for_scram_entries() {
        let file = file();
        let credential = file.scram_credential("carol").unwrap();
        assert_eq!(credential.iterations, 4096);
        assert_eq!(BASE64.encode(&credential.salt), "oQ2mNAAOiCS/kYMNwfkuEA==");
        assert_eq!(BASE64.encode(credential.stored_key), "br3O5htznhs1Ts4kLG2L8GPwb2owPhsS545grFIWMZU=");
        assert_eq!(BASE64.encode(credential.server_key), "RZGGmp47fCxp26n+68H2mL1EWNC0n8qHYUlIAg3EMdU=");
        assert!(file.scram_credential("alice").is_none());
        assert!(file.scram_credential("mallory").is_none());
        assert!(ScramCredentials::scram_credential(&file, "carol").is_some());
    }

    #[test]
    fn user_name_is_everything_before_the_first_colon() {
        let file = PasswordFile::parse(&format!("a b :{PBKDF2_ENTRY}")).unwrap();
        assert!(file.verify("a b ", b"secret"));
    }

    #[test]
    fn hash_password_round_trip() {
        let entry = hash_password(b"s3cret");
        let fields: Vec<&str> = entry.split('$').collect();
        assert_eq!(fields[..3], ["", "7", "101"]);
        assert_eq!(BASE64.decode(fields[3]).unwrap().len(), 12);
        assert_eq!(BASE64.decode(fields[4]).unwrap().len(), 64);
        assert_ne!(hash_password(b"s3cret"), entry, "fresh salt each time");

        let file = PasswordFile::parse(&format!("dave:{entry}")).unwrap();
        assert!(file.verify("dave", b"s3cret"));
        assert!(!file.verify("dave", b"s3cre"));
    }

    #[test]
    fn scram_verifier_round_trip() {
        let entry = scram_verifier(b"s3cret");
        assert!(entry.starts_with("SCRAM-SHA-256$4096:"), "{entry}");
        let file = PasswordFile::parse(&format!("erin:{entry}")).unwrap();
        assert!(file.verify("erin", b"s3cret"));
        assert!(!file.verify("erin", b"s3cre"));
        let credential = file.scram_credential("erin").unwrap();
        assert_eq!(credential.salt.len(), 16);
        assert_eq!(credential.iterations, 4096);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let key = BASE64.encode([0u8; 32]);
        let hash = BASE64.encode([0u8; 64]);
        let cases = [
            ("no separator here".to_owned(), LineError::MissingSeparator),
            (format!(":{PBKDF2_ENTRY}"), LineError::EmptyUser),
            ("u:plaintext".to_owned(), LineError::UnknownFormat),
            ("u:$5$abc$def".to_owned(), LineError::UnknownFormat),
            ("u:".to_owned(), LineError::UnknownFormat),
            ("u:$7$101$c2FsdA==".to_owned(), LineError::Malformed("$7$<iterations>$<salt>$<hash>")),
            (format!("u:$7$101$c2FsdA==${hash}$x"), LineError::Malformed("$7$<iterations>$<salt>$<hash>")),
            (format!("u:$7$0$c2FsdA==${hash}"), LineError::Iterations),
            (format!("u:$7$10000001$c2FsdA==${hash}"), LineError::Iterations),
            (format!("u:$7$99999999999$c2FsdA==${hash}"), LineError::Iterations),
            (format!("u:$7$+101$c2FsdA==${hash}"), LineError::Iterations),
            (format!("u:$7$$c2FsdA==${hash}"), LineError::Iterations),
            (format!("u:$7$101$not base64!${hash}"), LineError::Base64("salt")),
            (format!("u:$7$101$${hash}"), LineError::EmptySalt),
            (
                "u:$7$101$c2FsdA==$c2FsdA==".to_owned(),
                LineError::Length { field: "hash", expected: 64, found: 4 },
            ),
            ("u:$7$101$c2FsdA==$%%%".to_owned(), LineError::Base64("hash")),
            ("u:$6$c2FsdA==".to_owned(), LineError::Malformed("$6$<salt>$<hash>")),
            ("u:$6$c2FsdA==$YQ==".to_owned(), LineError::Length { field: "hash", expected: 64, found: 1 }),
            (format!("u:SCRAM-SHA-256$4096:c2FsdA==${key}"), LineError::Malformed(SCRAM_SHAPE)),
            (format!("u:SCRAM-SHA-256$4096${key}:{key}"), LineError::Malformed(SCRAM_SHAPE)),
            (format!("u:SCRAM-SHA-256$0:c2FsdA==${key}:{key}"), LineError::Iterations),
            (
                format!("u:SCRAM-SHA-256$4096:c2FsdA==${key}:YQ=="),
                LineError::Length { field: "ServerKey", expected: 32, found: 1 },
            ),
            (format!("u:SCRAM-SHA-256$4096:c2FsdA==$!:{key}"), LineError::Base64("StoredKey")),
        ];
        for (line, problem) in cases {
            let text = format!("# comment\n\nok:{PBKDF2_ENTRY}\n{line}\nlater:{PBKDF2_ENTRY}\n");
            assert_eq!(line_error(&text), (4, problem), "{line:?}");
        }
    }

    const SCRAM_SHAPE: &str = "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";

    #[test]
    fn duplicate_user_is_an_error() {
        let text = format!("alice:{PBKDF2_ENTRY}\n# again\nalice:{SHA512_ENTRY}\n");
        assert_eq!(
            line_error(&text),
            (3, LineError::DuplicateUser { user: "alice".to_owned(), first_line: 1 })
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, format!("alice:{PBKDF2_ENTRY}\nbob:$6$bad\n")).unwrap();
        let message = PasswordFile::load(&path).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}:2: ", path.display())), "{message}");

        let missing = dir.path().join("missing");
        let message = PasswordFile::load(&missing).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: ", missing.display())), "{message}");

        let message = PasswordFile::parse("junk").unwrap_err().to_string();
        assert_eq!(message, "<password text>:1: missing ':' between user name and password hash");
    }

    #[test]
    fn no_input_panics() {
        let text = format!("alice:{PBKDF2_ENTRY}\nbob:{SHA512_ENTRY}\ncarol:{SCRAM_ENTRY}\n");
        for end in 0..text.len() {
            let _ = PasswordFile::parse(&text[..end]);
            let _ = PasswordFile::parse(&text[end..]);
        }
        for odd in ["\u{0}:\u{0}", "::::", "$7$", "u:$7$$$", "u:SCRAM-SHA-256$:$:", "u:$6$$", "\u{feff}u:x"] {
            let _ = PasswordFile::parse(odd);
        }
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, format!("alice:{PBKDF2_ENTRY}\n")).unwrap();
        assert!(PasswordFile::load(&path).unwrap().verify("alice", b"secret"));
    }

    #[test]
    fn set_user_creates_replaces_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        set_user(&path, "alice", PBKDF2_ENTRY).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("alice:{PBKDF2_ENTRY}\n"));

        fs::write(&path, format!("# head\nalice:{PBKDF2_ENTRY}\r\n\n# mid\nbob:{SHA512_ENTRY}\n# tail"))
            .unwrap();
        set_user(&path, "alice", SCRAM_ENTRY).unwrap();
        set_user(&path, "carol", SHA512_ENTRY).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!(
                "# head\nalice:{SCRAM_ENTRY}\r\n\n# mid\nbob:{SHA512_ENTRY}\n# tail\ncarol:{SHA512_ENTRY}\n"
            )
        );
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.scram_credential("alice").is_some());
        assert!(file.verify("carol", b"secret"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn delete_user_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let before = format!("# head\nalice:{PBKDF2_ENTRY}\n# alice:not a user\nbob:{SHA512_ENTRY}\n");
        fs::write(&path, &before).unwrap();
        assert!(!delete_user(&path, "carol").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert!(delete_user(&path, "alice").unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("# head\n# alice:not a user\nbob:{SHA512_ENTRY}\n")
        );
        assert!(!delete_user(&path, "alice").unwrap());
        assert!(!delete_user(&dir.path().join("missing"), "alice").unwrap());
    }

    #[test]
    fn bad_user_names_and_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        for user in ["", "a:b", "a\nb", "a\rb", "#a", "  #a", "   "] {
            let error = set_user(&path, user, PBKDF2_ENTRY).unwrap_err();
            assert!(matches!(error, PasswordFileError::InvalidUserName(_)), "{user:?}: {error}");
            assert!(
                matches!(delete_user(&path, user), Err(PasswordFileError::InvalidUserName(_))),
                "{user:?}"
            );
        }
        for entry in ["plain", "$7$101$c2FsdA==$YQ==", &format!("{PBKDF2_ENTRY}\nmallory:{PBKDF2_ENTRY}")] {
            let error = set_user(&path, "alice", entry).unwrap_err();
            assert!(matches!(error, PasswordFileError::InvalidEntry(_)), "{entry:?}: {error}");
        }
        assert!(!path.exists(), "nothing written on refusal");
    }

    #[cfg(unix)]
    #[test]
    fn written_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "# world readable\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        set_user(&path, "alice", PBKDF2_ENTRY).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        set_user(&dir.path().join("new"), "alice", PBKDF2_ENTRY).unwrap();
        assert_eq!(fs::metadata(dir.path().join("new")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn debug_output_hides_hashes() {
        let shown = format!("{:?}", file());
        assert_eq!(shown, "PasswordFile { users: 3 }");
    }
}
