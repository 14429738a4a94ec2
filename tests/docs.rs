//! The documentation agrees with the program and with itself: the README's
//! options table and `--help` list the same options with the same defaults,
//! and every `*.md` file that a tracked file names exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// An option as a table row or a help line: its short form, and its default
/// (`None` when none is stated).
#[derive(Debug, PartialEq, Eq)]
struct Opt {
    short: Option<String>,
    default: Option<String>,
}

/// The README's `## Options` table, keyed by long option.
fn readme_options() -> BTreeMap<String, Opt> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with("| short | long | argument | default |"));
    assert!(
        lines.next().is_some(),
        "README.md has no options table (| short | long | argument | default | ...)"
    );
    let mut out = BTreeMap::new();
    for row in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<String> = row
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('`', ""))
            .collect();
        assert!(
            cells.len() >= 5,
            "options row with {} cells: {row}",
            cells.len()
        );
        let short = (!cells[0].is_empty()).then(|| cells[0].clone());
        // "off" and "none" in the table: the help states no default for those.
        let default = match cells[3].as_str() {
            "" | "none" => None,
            "off" if !row.contains("--metrics") => None,
            d => Some(d.to_string()),
        };
        out.insert(cells[1].clone(), Opt { short, default });
    }
    out
}

/// `conn-daemon --help`, keyed by long option.
fn help_options() -> BTreeMap<String, Opt> {
    let out = Command::new(env!("CARGO_BIN_EXE_conn-daemon"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "--help exited {:?}", out.status);
    let text = String::from_utf8(out.stdout).expect("utf-8 help");
    // Join continuation lines (a wrapped description) to their option.
    let mut entries: Vec<String> = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .skip(1)
    {
        let t = line.trim_start();
        if t.starts_with('-') {
            entries.push(t.to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push(' ');
            last.push_str(t);
        }
    }
    let mut opts = BTreeMap::new();
    for e in entries {
        let mut words = e.split_whitespace();
        let mut first = words.next().unwrap_or_default();
        let mut short = None;
        if !first.starts_with("--") {
            short = Some(first.trim_end_matches(',').to_string());
            first = words.next().unwrap_or_default();
        }
        let default = e.rfind("[default: ").map(|i| {
            e[i + "[default: ".len()..]
                .trim_end()
                .trim_end_matches(']')
                .to_string()
        });
        opts.insert(first.to_string(), Opt { short, default });
    }
    opts
}

#[test]
fn readme_options_table_agrees_with_help() {
    let (readme, help) = (readme_options(), help_options());
    assert!(
        help.len() >= 10,
        "parsed too few options from --help: {help:?}"
    );
    let only_readme: Vec<_> = readme.keys().filter(|k| !help.contains_key(*k)).collect();
    let only_help: Vec<_> = help.keys().filter(|k| !readme.contains_key(*k)).collect();
    assert!(
        only_readme.is_empty() && only_help.is_empty(),
        "options only in the README: {only_readme:?}; only in --help: {only_help:?}"
    );
    let differ: Vec<_> = readme
        .iter()
        .filter(|(k, r)| help[*k] != **r)
        .map(|(k, r)| format!("{k}: README {r:?}, --help {:?}", help[k]))
        .collect();
    assert!(
        differ.is_empty(),
        "short forms or defaults differ:\n{}",
        differ.join("\n")
    );
}

/// Tracked files, from git (the repository's own view of what it contains).
fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(ROOT)
        .output()
        .expect("run git ls-files (the test reads the repository's file list)");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

/// Every run of path characters in `text` that ends in `.md`,
/// except inside URLs (another repository's files).
fn md_names(text: &str) -> Vec<String> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./~-#".contains(c);
    let mut names = Vec::new();
    for word in text.split(|c: char| !is_path(c) && c != ':') {
        if word.contains("://") {
            continue;
        }
        for token in word.split(':') {
            let token = token
                .split('#')
                .next()
                .unwrap_or_default()
                .trim_end_matches('.');
            if token.len() > 3 && token.ends_with(".md") {
                names.push(token.to_string());
            }
        }
    }
    names
}

#[test]
fn every_markdown_file_named_in_the_repository_exists() {
    let root = Path::new(ROOT);
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in tracked_files() {
        // libev's own tree names upstream's files.
        if file.starts_with("vendor") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(&file)) else {
            continue; // binary (fuzz corpora)
        };
        // In Rust, only comments name documents; string literals may be files
        // a program writes (a test's output).
        let text: String = if file.extension().is_some_and(|e| e == "rs") {
            text.lines()
                .filter_map(|l| l.find("//").map(|i| &l[i..]))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        };
        let dir = file.parent().unwrap_or(Path::new(""));
        for name in md_names(&text) {
            seen += 1;
            let found = root.join(dir).join(&name).exists() || root.join(&name).exists();
            if !found {
                missing.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(
        seen >= 20,
        "found only {seen} references: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "named but not in the repository:\n{}",
        missing.join("\n")
    );
}
