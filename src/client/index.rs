//! `index.txt`: the client's record of the state it last synced (SPEC §8).
//!
//! One line per file, `<filename>,<version>,<h1> <h2> ... <hN> ` with a
//! trailing space after the last hash; an empty file has nothing after the
//! second comma, a deleted file the single hash `0`. Readers accept lines with
//! or without the trailing space. A name containing `,`, `%` or a newline is
//! percent-encoded so every line splits unambiguously; other names are
//! written as they are, which keeps the file readable by the original client.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::disk::{self, DiskError};
use super::names::{self, INDEX_FILE};
use crate::hash::{TOMBSTONE_HASH, is_tombstone, is_valid_hash};
use crate::proto::FileMetaData;

/// What the client knows of one file: the version it holds and that
/// version's block hashes (`["0"]` for a deleted file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file's version on the MetaStore.
    pub version: i32,
    /// The block hashes, in order; empty for an empty file.
    pub hashes: Vec<String>,
}

impl Entry {
    /// Whether this entry records a deletion.
    pub fn is_tombstone(&self) -> bool {
        is_tombstone(&self.hashes)
    }

    /// The wire form of this entry for the file `name`.
    pub fn to_meta(&self, name: &str) -> FileMetaData {
        FileMetaData {
            filename: name.to_string(),
            version: self.version,
            block_hash_list: self.hashes.clone(),
        }
    }
}

impl From<FileMetaData> for Entry {
    fn from(meta: FileMetaData) -> Self {
        Self {
            version: meta.version,
            hashes: meta.block_hash_list,
        }
    }
}

/// File name → last synced entry, ordered by name.
pub type Index = BTreeMap<String, Entry>;

/// Why `index.txt` could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path of index.txt.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line is not in the index format.
    #[error("{path}: line {line}: {reason}")]
    Malformed {
        /// Path of index.txt.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The new index could not be written.
    #[error("cannot write the index: {0}")]
    Write(#[from] DiskError),
}

/// Path of the index of `base`.
pub fn path(base: &Path) -> PathBuf {
    base.join(INDEX_FILE)
}

/// Reads the index of `base`; a missing file is an empty index.
pub fn load(base: &Path) -> Result<Index, IndexError> {
    let path = path(base);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Index::new()),
        Err(source) => return Err(IndexError::Read { path, source }),
    };
    parse(&bytes).map_err(|(line, reason)| IndexError::Malformed { path, line, reason })
}

/// Writes `index` as the index of `base`, atomically and durably.
pub fn save(base: &Path, index: &Index) -> Result<(), IndexError> {
    disk::write_atomically(&path(base), render(index).as_bytes())?;
    Ok(())
}

/// Parses index text; an error carries the 1-based line number and reason.
fn parse(bytes: &[u8]) -> Result<Index, (usize, String)> {
    let mut index = Index::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = std::str::from_utf8(raw).map_err(|_| (line_no, "not valid UTF-8".into()))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let (name, entry) = parse_line(line).map_err(|reason| (line_no, reason))?;
        if index.insert(name.clone(), entry).is_some() {
            return Err((line_no, format!("{name:?} is listed twice")));
        }
    }
    Ok(index)
}

fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let malformed = || format!("expected `<filename>,<version>,<hashes>`, found {line:?}");
    let (encoded, rest) = line.split_once(',').ok_or_else(malformed)?;
    let (version, hashes) = rest.split_once(',').ok_or_else(malformed)?;
    let name = decode_name(encoded)?;
    names::check(&name).map_err(|e| format!("file name {name:?} cannot be synced: {e}"))?;
    let version = version
        .parse()
        .map_err(|_| format!("version {version:?} is not an integer"))?;
    let hashes: Vec<String> = hashes
        .split(' ')
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = hashes.iter().find(|h| !is_valid_hash(h))
        && !is_tombstone(&hashes)
    {
        return Err(format!(
            "{bad:?} is not a block hash (64 hex characters) or the tombstone {TOMBSTONE_HASH:?}"
        ));
    }
    Ok((name, Entry { version, hashes }))
}

/// The text of `index`, one line per file.
fn render(index: &Index) -> String {
    let mut out = String::new();
    for (name, entry) in index {
        out.push_str(&encode_name(name));
        out.push(',');
        out.push_str(&entry.version.to_string());
        out.push(',');
        for hash in &entry.hashes {
            out.push_str(hash);
            out.push(' ');
        }
        out.push('\n');
    }
    out
}

/// Percent-encodes the characters that would break a line: `%`, `,`, `\n`.
fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ',' => out.push_str("%2C"),
            '\n' => out.push_str("%0A"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`encode_name`]; any `%XX` escape is accepted.
fn decode_name(encoded: &str) -> Result<String, String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = encoded
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad percent escape in file name {encoded:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("file name {encoded:?} decodes to invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{hash_block, tombstone};

    fn entry(version: i32, hashes: Vec<String>) -> Entry {
        Entry { version, hashes }
    }

    #[test]
    fn writes_the_spec_format() {
        let (h1, h2) = (hash_block(b"1"), hash_block(b"2"));
        let index = Index::from([
            ("a.txt".to_string(), entry(3, vec![h1.clone(), h2.clone()])),
            ("empty".to_string(), entry(1, vec![])),
            ("gone".to_string(), entry(2, tombstone())),
        ]);
        assert_eq!(
            render(&index),
            format!("a.txt,3,{h1} {h2} \nempty,1,\ngone,2,0 \n")
        );
    }

    #[test]
    fn round_trips_every_kind_of_entry() {
        let index = Index::from([
            (
                "a.txt".to_string(),
                entry(3, vec![hash_block(b"1"), hash_block(b"2")]),
            ),
            ("empty".to_string(), entry(1, vec![])),
            ("gone".to_string(), entry(2, tombstone())),
            ("dir/sub/f".to_string(), entry(7, vec![hash_block(b"3")])),
            ("a,b%c\nd".to_string(), entry(1, vec![hash_block(b"4")])),
            ("%2C literal".to_string(), entry(1, vec![])),
            ("spaces and ünïcødé 日本".to_string(), entry(5, vec![])),
        ]);
        let text = render(&index);
        assert_eq!(text.lines().count(), index.len());
        assert_eq!(parse(text.as_bytes()).unwrap(), index);
    }

    #[test]
    fn accepts_lines_without_trailing_space_or_newline() {
        let h = hash_block(b"x");
        let text = format!("a,1,{h}\nb,2,0\r\nc,3,\n\nd,4,{h} {h}");
        let index = parse(text.as_bytes()).unwrap();
        assert_eq!(index["a"], entry(1, vec![h.clone()]));
        assert_eq!(index["b"], entry(2, tombstone()));
        assert_eq!(index["c"], entry(3, vec![]));
        assert_eq!(index["d"], entry(4, vec![h.clone(), h]));
    }

    #[test]
    fn only_the_three_special_characters_are_encoded() {
        assert_eq!(encode_name("a,b%c\nd e/é"), "a%2Cb%25c%0Ad e/é");
        assert_eq!(decode_name("a%2cb%25c%0Ad e/é").unwrap(), "a,b%c\nd e/é");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let h = hash_block(b"x");
        for (text, line, needle) in [
            ("no commas\n".to_string(), 1, "expected"),
            (format!("a,1,{h}\nb,1\n"), 2, "expected"),
            (format!("a,x,{h}\n"), 1, "not an integer"),
            ("a,1,nothex\n".to_string(), 1, "not a block hash"),
            (format!("a,1,0 {h}\n"), 1, "not a block hash"),
            ("a,1,\na,2,\n".to_string(), 2, "listed twice"),
            ("a%zz,1,\n".to_string(), 1, "percent escape"),
            ("a%ff,1,\n".to_string(), 1, "UTF-8"),
            ("../x,1,\n".to_string(), 1, "cannot be synced"),
            ("index.txt,1,\n".to_string(), 1, "cannot be synced"),
        ] {
            let (got_line, reason) = parse(text.as_bytes()).unwrap_err();
            assert_eq!(got_line, line, "{text:?}: {reason}");
            assert!(reason.contains(needle), "{text:?}: {reason}");
        }
        assert_eq!(parse(b"ok,1,\n\xff,1,\n").unwrap_err().0, 2);
    }

    #[test]
    fn load_and_save_through_the_base_directory() {
        let base = tempfile::tempdir().unwrap();
        assert!(load(base.path()).unwrap().is_empty());

        let index = Index::from([("f".to_string(), entry(2, vec![hash_block(b"f")]))]);
        save(base.path(), &index).unwrap();
        assert_eq!(load(base.path()).unwrap(), index);

        std::fs::write(path(base.path()), "ok,1,\nbroken\n").unwrap();
        let err = load(base.path()).unwrap_err().to_string();
        assert!(err.contains("index.txt") && err.contains("line 2"), "{err}");
    }
}
