//! Cluster configuration (SPEC §6): which addresses the MetaStore (or Raft)
//! servers and the BlockStores listen on.
//!
//! Three forms are accepted: JSON with `MetaStoreAddrs`/`BlockStoreAddrs`, JSON
//! with `RaftAddrs`/`BlockAddrs`, and the older text format
//! (`M: <n>` then `n` lines `metadata<i>: <host:port>`). As in the original,
//! the text format's keys are not checked: the `i`-th line after the header
//! is server `i`, because real configs repeat or misnumber keys.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The addresses of a SurfStore deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// MetaStore / Raft server addresses; server `i` listens on entry `i`.
    pub meta_addrs: Vec<String>,
    /// BlockStore addresses (may be empty in the older text format).
    pub block_addrs: Vec<String>,
}

/// Why a configuration file could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("invalid config {path}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
struct JsonConfig {
    #[serde(rename = "MetaStoreAddrs", alias = "RaftAddrs")]
    meta_addrs: Vec<String>,
    #[serde(rename = "BlockStoreAddrs", alias = "BlockAddrs", default)]
    block_addrs: Vec<String>,
}

impl ClusterConfig {
    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses a config from its text; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config = if text.trim_start().starts_with('{') {
            let json: JsonConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
            ClusterConfig {
                meta_addrs: json.meta_addrs,
                block_addrs: json.block_addrs,
            }
        } else {
            Self::parse_text(text)?
        };
        if config.meta_addrs.is_empty() {
            return Err("no MetaStore addresses".into());
        }
        if let Some(bad) = config
            .meta_addrs
            .iter()
            .chain(&config.block_addrs)
            .find(|addr| !is_host_port(addr))
        {
            return Err(format!("address {bad:?} is not host:port"));
        }
        Ok(config)
    }

    fn parse_text(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header = lines.next().ok_or("empty file")?;
        let count: usize = header
            .strip_prefix("M:")
            .ok_or_else(|| format!("expected JSON or a first line `M: <n>`, found {header:?}"))?
            .trim()
            .parse()
            .map_err(|_| format!("bad server count in {header:?}"))?;
        let mut meta_addrs = Vec::with_capacity(count);
        for i in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| format!("expected {count} servers, found {i}"))?;
            let (key, addr) = line
                .split_once(':')
                .ok_or_else(|| format!("expected `metadata{i}: <host:port>`, found {line:?}"))?;
            if key.trim() != format!("metadata{i}") {
                tracing::debug!(
                    line = i + 1,
                    key = key.trim(),
                    "config key ignored; line order names the server"
                );
            }
            meta_addrs.push(addr.trim().to_string());
        }
        Ok(ClusterConfig {
            meta_addrs,
            block_addrs: Vec::new(),
        })
    }
}

/// Whether `addr` looks like `host:port` with a numeric port.
pub fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// [`is_host_port`], with what to do instead when `addr` is not: a URL
/// (`http://host:port`) is answered with the `host:port` inside it.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    if let Some((_, rest)) = addr.split_once("://") {
        return Err(format!(
            "{addr:?} is a URL; use host:port, e.g. {}",
            rest.trim_end_matches('/')
        ));
    }
    if is_host_port(addr) {
        Ok(())
    } else {
        Err(format!("{addr:?} is not host:port"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_answered_with_the_host_port_inside_it() {
        assert_eq!(check_host_port("localhost:8080"), Ok(()));
        assert_eq!(
            check_host_port("http://10.0.0.5:8080/"),
            Err("\"http://10.0.0.5:8080/\" is a URL; use host:port, e.g. 10.0.0.5:8080".into())
        );
        assert_eq!(
            check_host_port("nohost"),
            Err("\"nohost\" is not host:port".into())
        );
        assert!(!is_host_port("a/b:1"));
    }

    #[test]
    fn parses_json_with_both_spellings() {
        let a = ClusterConfig::parse(
            r#"{"MetaStoreAddrs": ["localhost:9007", "localhost:9008"], "BlockStoreAddrs": ["localhost:8081"]}"#,
        )
        .unwrap();
        let b = ClusterConfig::parse(
            r#"{"RaftAddrs": ["localhost:9007", "localhost:9008"], "BlockAddrs": ["localhost:8081"]}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.meta_addrs, ["localhost:9007", "localhost:9008"]);
        assert_eq!(a.block_addrs, ["localhost:8081"]);
    }

    #[test]
    fn parses_the_older_text_format() {
        let c =
            ClusterConfig::parse("M: 2\nmetadata0: localhost:8080\nmetadata1: localhost:8081\n")
                .unwrap();
        assert_eq!(c.meta_addrs, ["localhost:8080", "localhost:8081"]);
        assert!(c.block_addrs.is_empty());
    }

    #[test]
    fn text_keys_are_ignored_and_line_order_names_servers() {
        // A real `5nodes.txt` from the wild: `metadata2` twice, no `metadata3`.
        let c = ClusterConfig::parse(
            "M: 5\nmetadata0: localhost:8080\nmetadata1: localhost:8081\n\
             metadata2: localhost:8082\nmetadata2: localhost:8083\nserver4: localhost:8084\n",
        )
        .unwrap();
        assert_eq!(
            c.meta_addrs,
            [
                "localhost:8080",
                "localhost:8081",
                "localhost:8082",
                "localhost:8083",
                "localhost:8084"
            ]
        );
    }

    #[test]
    fn rejects_malformed_configs() {
        for (text, needle) in [
            ("", "empty"),
            ("{", "EOF"),
            (r#"{"BlockStoreAddrs": []}"#, "MetaStoreAddrs"),
            (r#"{"MetaStoreAddrs": []}"#, "no MetaStore"),
            (r#"{"MetaStoreAddrs": ["nohost"]}"#, "host:port"),
            ("M: 3\nmetadata0: localhost:1\n", "expected 3 servers"),
            ("M: x\n", "bad server count"),
            ("hello\n", "first line"),
            ("M: 1\nlocalhost\n", "metadata0"),
        ] {
            let err = ClusterConfig::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = ClusterConfig::load(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{oops").unwrap();
        let err = ClusterConfig::load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("invalid"), "{err}");
    }
}
