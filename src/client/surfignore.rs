//! `BASEDIR/.surfignore`: paths the client leaves alone (SPEC §9.5), in
//! `.gitignore` syntax (`*.tmp`, `build/`, `!keep.tmp`, `/top-only`, `#`
//! comments), matched by the `ignore` crate's gitignore matcher.
//!
//! An ignored path is neither uploaded, nor deleted on the server, nor
//! downloaded; its index.txt entry, if any, stays as it was. A pattern
//! naming a directory ignores everything below it. `.surfignore` itself is
//! never ignored: it syncs like any file, so every client of a base
//! directory applies the same rules (from the run after it arrives).
//!
//! A rule that cannot be parsed fails the run: ignoring less than the user
//! asked could upload or delete exactly what they meant to protect.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The rules' file name, in the base directory.
pub const FILE: &str = ".surfignore";

/// A `.surfignore` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The rules file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not a valid pattern.
    #[error("{path} line {line}: {message}; fix or remove that rule")]
    Pattern {
        /// The rules file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// The ignore rules of one base directory.
#[derive(Debug, Clone)]
pub struct Rules {
    matcher: Gitignore,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            matcher: Gitignore::empty(),
        }
    }
}

impl Rules {
    /// The rules in `base/.surfignore`; none if there is no such file.
    pub fn load(base: &Path) -> Result<Self, RulesError> {
        let path = base.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(RulesError::Read { path, source }),
        }
    }

    /// The rules in `text`; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RulesError> {
        // Names are relative to the base directory, so the matcher's root
        // is the empty path.
        let mut builder = GitignoreBuilder::new("");
        let pattern_error = |line: usize, error: ignore::Error| RulesError::Pattern {
            path: path.to_path_buf(),
            line,
            message: error.to_string(),
        };
        for (i, line) in text.lines().enumerate() {
            builder
                .add_line(None, line)
                .map_err(|e| pattern_error(i + 1, e))?;
        }
        let matcher = builder.build().map_err(|e| pattern_error(0, e))?;
        Ok(Self { matcher })
    }

    /// Whether the synced name `name` (`/`-separated, relative to the base
    /// directory) is ignored, by a rule on it or on a folder above it.
    pub fn is_ignored(&self, name: &str) -> bool {
        let path = Path::new(name);
        // The matcher only knows names below the base directory; such a
        // name is refused before any rule applies anyway.
        if name == FILE || path.has_root() {
            return false;
        }
        self.matcher
            .matched_path_or_any_parents(path, false)
            .is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse(text, Path::new("base/.surfignore")).unwrap()
    }

    #[test]
    fn gitignore_syntax_applies_to_names_and_the_folders_above_them() {
        let rules =
            rules("# build output\n*.tmp\nbuild/\n/top.log\n!keep.tmp\ndocs/**/draft-*\n.*\n");
        for name in [
            "x.tmp",
            "deep/er/x.tmp",
            "build/out.o",
            "src/build/deep/out.o",
            "top.log",
            "docs/a/b/draft-1.md",
            ".hidden",
            "dir/.hidden",
        ] {
            assert!(rules.is_ignored(name), "{name} should be ignored");
        }
        for name in [
            "x.txt",
            "keep.tmp",
            "build",
            "sub/top.log",
            "docs/final.md",
            ".surfignore",
            "/abs.tmp",
        ] {
            assert!(!rules.is_ignored(name), "{name} should not be ignored");
        }
    }

    #[test]
    fn no_file_ignores_nothing_and_a_bad_rule_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Rules::load(dir.path()).unwrap().is_ignored("a.tmp"));
        std::fs::write(dir.path().join(FILE), "*.tmp\n").unwrap();
        assert!(Rules::load(dir.path()).unwrap().is_ignored("a.tmp"));
        let error = Rules::parse("ok\n{a,b\n", Path::new("b/.surfignore")).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("b/.surfignore line 2: "), "{message}");
    }
}
