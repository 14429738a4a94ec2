//! `--config FILE`: the long options of the command line, one per line.
//!
//! `name = value`, or the name alone for a flag; `#` starts a comment (a whole
//! line, or after a value, following a blank); blank lines are skipped. Names
//! are the long options without their dashes, written out in full (no
//! prefixes: a file outlives the options it was written for). What the file
//! says is checked line by line by the command line's own parsers (`cli.rs`),
//! so that an error names its line.

use std::fmt;
use std::path::{Path, PathBuf};

/// One setting of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// 1-based line number.
    pub line: usize,
    /// The long option's name, without dashes.
    pub name: String,
    /// The value after `=`; `None` for a flag.
    pub value: Option<String>,
}

/// Why a config file is refused: the file, the line (when one is to blame)
/// and the reason, printed as one line (`FILE:LINE: reason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// The file as given.
    pub path: PathBuf,
    /// 1-based line, `None` for the file as a whole (unreadable, or options
    /// that conflict with each other).
    pub line: Option<usize>,
    /// What is wrong, without a trailing newline.
    pub reason: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for FileError {}

/// Reads and splits `path` into its settings (their names and values are
/// checked by the caller).
pub(super) fn read(path: &Path) -> Result<Vec<Entry>, FileError> {
    let text = std::fs::read(path).map_err(|e| FileError {
        path: path.to_owned(),
        line: None,
        reason: format!("cannot read it: {e}"),
    })?;
    let text = String::from_utf8(text).map_err(|e| FileError {
        path: path.to_owned(),
        line: Some(line_of(e.as_bytes(), e.utf8_error().valid_up_to())),
        reason: "not UTF-8 text".into(),
    })?;
    parse(&text).map_err(|(line, reason)| FileError {
        path: path.to_owned(),
        line: Some(line),
        reason,
    })
}

/// The 1-based line of byte `at` in `bytes`.
fn line_of(bytes: &[u8], at: usize) -> usize {
    1 + bytes[..at].iter().filter(|&&b| b == b'\n').count()
}

/// Splits `text` into settings; Err: the line and the reason.
fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = strip_comment(raw).trim();
        if content.is_empty() {
            continue;
        }
        let (name, value) = match content.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (content, None),
        };
        if name.is_empty() {
            return Err((line, "a setting without a name".into()));
        }
        if name.starts_with('-') {
            return Err((
                line,
                format!(
                    "write the option without dashes: `{} = ...`",
                    name.trim_start_matches('-')
                ),
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err((line, format!("{name:?} is not an option name")));
        }
        entries.push(Entry {
            line,
            name: name.to_string(),
            value: value.map(str::to_string),
        });
    }
    Ok(entries)
}

/// `line` up to its comment: a `#` at the start or after a blank.
fn strip_comment(line: &str) -> &str {
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_blank {
            return &line[..i];
        }
        prev_blank = c == ' ' || c == '\t';
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: usize, name: &str, value: Option<&str>) -> Entry {
        Entry {
            line,
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn settings_flags_comments_and_blanks() {
        let text = "# a comment\n\nport = 9001\n  verbose  \naccept-capacity=64 # trailing\n\
                    listen = [::1]:9002\nlisten = 127.0.0.1\n\t# indented comment\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                entry(3, "port", Some("9001")),
                entry(4, "verbose", None),
                entry(5, "accept-capacity", Some("64")),
                entry(6, "listen", Some("[::1]:9002")),
                entry(7, "listen", Some("127.0.0.1")),
            ]
        );
        // A `#` inside a value is part of it (no blank before it).
        assert_eq!(
            parse("pid-file = /run/a#b\n").unwrap(),
            vec![entry(1, "pid-file", Some("/run/a#b"))]
        );
        assert_eq!(parse("port =\n").unwrap(), vec![entry(1, "port", Some(""))]);
    }

    #[test]
    fn malformed_lines_are_named() {
        assert_eq!(parse("port = 1\n= 5\n").unwrap_err().0, 2);
        let (line, why) = parse("\n--port = 5\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(why.contains("without dashes"), "{why}");
        assert_eq!(parse("a b = 1").unwrap_err().0, 1);
        assert_eq!(parse("Port = 1").unwrap_err().0, 1);
    }

    #[test]
    fn errors_print_file_line_and_reason() {
        let e = FileError {
            path: "/etc/x.conf".into(),
            line: Some(3),
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "/etc/x.conf:3: bad");
        let e = FileError { line: None, ..e };
        assert_eq!(e.to_string(), "/etc/x.conf: bad");
        let missing = read(Path::new("/nonexistent/conn-daemon.conf")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/conn-daemon.conf: cannot read it: "),
            "{missing}"
        );
    }
}
