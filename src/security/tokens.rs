//! Bearer tokens and their roles (SPEC §9.3): the `--auth-tokens` file a
//! server checks tokens against, fresh tokens for `surfstore-ctl add-token`,
//! and the token a client or a Raft server sends.
//!
//! A server never holds a token, only its SHA-256: the file can be read by
//! whoever operates the server without giving them anyone's access.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// What a token lets its holder call (SPEC §9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Syncs files: BlockStore, MetaStore, and the MetaStore calls of a
    /// Raft server.
    User,
    /// A Raft server calling its peers: replication, elections, snapshots.
    Peer,
    /// Operates the cluster: may call everything.
    Admin,
}

impl Role {
    /// Whether a holder of this role may call a method that needs `needed`.
    pub fn may(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }

    /// The role's name in a token file.
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Peer => "peer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(Role::User),
            "peer" => Ok(Role::Peer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (user, peer or admin)")),
        }
    }
}

/// Why tokens could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line of a token file is not `ROLE NAME SHA256HEX`.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A token file lists no token, so nobody could call the server.
    #[error("{}: lists no token (add one with surfstore-ctl add-token)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A token to send is empty or not printable ASCII (the token itself is
    /// never shown).
    #[error("the token from {source_name} is empty or holds characters a token cannot have")]
    Unusable {
        /// Where it came from: a file name or `SURFSTORE_TOKEN`.
        source_name: String,
    },
    /// A name for `add-token` has whitespace or is empty.
    #[error("token name {0:?} must be non-empty and without whitespace")]
    BadName(String),
}

/// One line of a token file.
#[derive(Debug, Clone)]
struct Known {
    role: Role,
    name: String,
    digest: [u8; 32],
}

/// The tokens a server accepts, by SHA-256 (the `--auth-tokens` file).
#[derive(Debug, Clone)]
pub struct TokenTable {
    known: Vec<Known>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its role.
    pub role: Role,
    /// Its name in the token file (safe to log: it is not the token).
    pub name: String,
}

impl TokenTable {
    /// Reads a token file: one `ROLE NAME SHA256HEX` per line; blank lines
    /// and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let malformed = |line: usize, reason: String| TokenError::Malformed {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut known = Vec::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let [role, name, digest] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return Err(malformed(number, "expected ROLE NAME SHA256HEX".into()));
            };
            let role = role.parse().map_err(|e| malformed(number, e))?;
            let digest = hex::decode(digest)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    malformed(number, "the hash is not 64 hex digits (a SHA-256)".into())
                })?;
            known.push(Known {
                role,
                name: name.to_string(),
                digest,
            });
        }
        if known.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { known })
    }

    /// Who holds `token`, if anyone. Every entry is compared, each in
    /// constant time, so the time taken says nothing about which entry
    /// (or how much of one) matched.
    pub fn holder(&self, token: &[u8]) -> Option<Holder> {
        let digest = digest(token);
        let mut found = None;
        for known in &self.known {
            if bool::from(known.digest.ct_eq(&digest)) {
                found = Some(known);
            }
        }
        found.map(|k| Holder {
            role: k.role,
            name: k.name.clone(),
        })
    }
}

/// SHA-256 of a token.
fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A fresh random token: 32 bytes from the OS's CSPRNG, in hex, after a
/// `sst_` prefix that makes a leaked one easy to recognise.
pub fn fresh_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sst_{}", hex::encode(bytes)))
}

/// Appends `ROLE NAME SHA256HEX` for `token` to the token file at `path`,
/// creating it readable by its owner only.
pub fn append_token(path: &Path, role: Role, name: &str, token: &str) -> Result<(), TokenError> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(TokenError::BadName(name.to_string()));
    }
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    let line = format!("{role} {name} {}\n", hex::encode(digest(token.as_bytes())));
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A token to send as `authorization: Bearer <token>`. It is marked
/// sensitive, so neither its `Debug` nor HTTP/2's header compression
/// tables reveal it.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Bearer {
    /// The bearer for `token`; `source_name` says where it came from, for
    /// the error (which never shows the token).
    pub fn new(token: &str, source_name: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        let unusable = || TokenError::Unusable {
            source_name: source_name.to_string(),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(unusable());
        }
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| unusable())?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The bearer in the first line of the file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let first = text.lines().next().unwrap_or_default();
        Self::new(first, &path.display().to_string())
    }

    /// The bearer from `--token-file FILE` or, without one, from the
    /// `SURFSTORE_TOKEN` environment variable; `None` when neither is given
    /// (an empty variable counts as none).
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Self>, TokenError> {
        if let Some(path) = file {
            return Self::from_file(path).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.trim().is_empty() => Self::new(&token, TOKEN_ENV).map(Some),
            _ => Ok(None),
        }
    }

    /// The `authorization` metadata value.
    pub fn header(&self) -> &AsciiMetadataValue {
        &self.0
    }
}

/// The environment variable a client reads its token from.
pub const TOKEN_ENV: &str = "SURFSTORE_TOKEN";

/// The token a request carries in its `authorization: Bearer` header.
pub fn presented(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then_some(token)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lines: &str) -> (tempfile::TempDir, Result<TokenTable, TokenError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, lines).unwrap();
        let table = TokenTable::load(&path);
        (dir, table)
    }

    #[test]
    fn appended_tokens_are_found_with_their_role_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let alice = fresh_token().unwrap();
        let ops = fresh_token().unwrap();
        append_token(&path, Role::User, "alice", &alice).unwrap();
        append_token(&path, Role::Admin, "ops", &ops).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&alice) && !text.contains(&ops), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let table = TokenTable::load(&path).unwrap();
        let holder = table.holder(alice.as_bytes()).unwrap();
        assert_eq!((holder.role, holder.name.as_str()), (Role::User, "alice"));
        assert_eq!(table.holder(ops.as_bytes()).unwrap().role, Role::Admin);
        assert_eq!(table.holder(b"sst_wrong"), None);
        assert_ne!(alice, ops);
    }

    #[test]
    fn malformed_files_name_the_line_and_the_problem() {
        let (_d, t) = table("# c\n\nuser alice\n");
        assert!(
            t.unwrap_err()
                .to_string()
                .contains(":3: expected ROLE NAME")
        );
        let (_d, t) = table("root alice 00\n");
        assert!(t.unwrap_err().to_string().contains("unknown role \"root\""));
        let (_d, t) = table("user alice abc\n");
        assert!(t.unwrap_err().to_string().contains("64 hex digits"));
        let (_d, t) = table("# nobody\n");
        assert!(t.unwrap_err().to_string().contains("lists no token"));
    }

    #[test]
    fn admin_may_call_everything_others_only_their_own() {
        assert!(Role::Admin.may(Role::User) && Role::Admin.may(Role::Peer));
        assert!(Role::User.may(Role::User) && !Role::User.may(Role::Peer));
        assert!(!Role::User.may(Role::Admin) && !Role::Peer.may(Role::User));
    }

    #[test]
    fn a_bearer_reads_back_and_never_shows_its_token() {
        let bearer = Bearer::new(" sst_abc \n", "f").unwrap();
        assert!(!format!("{bearer:?}").contains("sst_abc"));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(bearer.header().as_encoded_bytes()).unwrap(),
        );
        assert_eq!(presented(&headers), Some(&b"sst_abc"[..]));
        assert!(Bearer::new("", "f").is_err());
        let error = Bearer::new("has space", "SURFSTORE_TOKEN").unwrap_err();
        assert!(!error.to_string().contains("space"), "{error}");
    }
}
