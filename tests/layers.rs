//! The crate's top-level modules import downward only: no cycle among them,
//! and the layers are the ones docs/architecture.md's table states (the one
//! place they are written). An edge A -> B for every `crate::B` (or
//! `crate::{B, ..}`) that A's code names, comments left out;
//! `contrib/import-cycles.py` computes the same layers and checks the same table.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifiers right after each `crate::` in `code` (inside `{..}` too).
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for part in group.split(',') {
                    names.push(ident(part.trim()));
                }
            }
            None => names.push(ident(rest)),
        }
    }
    names
}

#[test]
fn modules_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            modules.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            modules.entry(name).or_default().push(path);
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, files) in &modules {
        let deps = edges.entry(module.clone()).or_default();
        for file in files {
            let text = fs::read_to_string(file).unwrap();
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            for name in crate_paths(&code) {
                if name != *module && modules.contains_key(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    // Peel off modules that import nothing left; what remains lies on a cycle.
    let mut left = edges.clone();
    let mut layers: Vec<BTreeSet<String>> = Vec::new();
    loop {
        let ready: Vec<String> = left
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(m, _)| m.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        layers.push(ready.iter().cloned().collect());
        for m in &ready {
            left.remove(m);
        }
        for deps in left.values_mut() {
            for m in &ready {
                deps.remove(m);
            }
        }
    }
    assert!(
        left.is_empty(),
        "import cycle among src/ modules: {left:?} (contrib/import-cycles.py shows the layers)"
    );
    // The check sees the imports at all: accept imports the engine.
    assert!(edges["accept"].contains("engine"), "{edges:?}");
    assert_eq!(
        documented_layers(),
        layers,
        "docs/architecture.md's layer table differs from the imports \
         (contrib/import-cycles.py prints them)"
    );
}

/// docs/architecture.md's layer table: per row, the `module` names of its
/// second column.
fn documented_layers() -> Vec<BTreeSet<String>> {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let mut rows = doc
        .lines()
        .skip_while(|l| !l.starts_with("| layer | modules |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .peekable();
    assert!(
        rows.peek().is_some(),
        "no layer table in docs/architecture.md"
    );
    rows.enumerate()
        .map(|(i, row)| {
            let cells: Vec<&str> = row.split('|').collect();
            assert_eq!(cells[1].trim(), i.to_string(), "layer numbers: {row}");
            cells[2]
                .split(',')
                .map(|m| m.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}
