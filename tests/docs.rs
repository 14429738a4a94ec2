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

/// Names of files that are not the repository's: where the Debian package
/// installs the docs, and the report conn-bench writes at run time.
fn written_elsewhere(name: &str) -> bool {
    let installed = name.starts_with('/') || name.starts_with("usr/share/doc/");
    let report = name == "report.md" || name.ends_with("/report.md");
    installed || report
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
            if written_elsewhere(&name) {
                continue;
            }
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

/// `bench/build-reference.sh` without a source: one line, exit 0.
#[test]
fn build_reference_without_a_source_skips_with_one_line() {
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("bench/build-reference.sh"))
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout,
        "build-reference: skipped: no upstream source given (usage: bench/build-reference.sh SRC [OUT])\n"
    );
}

/// A fake upstream tree with the two defective functions as upstream has them,
/// small enough to compile, and stand-ins for cmake and dpkg-query (a real
/// cmake needs AutoOpts and libev). `make` is a stand-in too, but it really
/// compiles main.cc with g++ -Wreturn-type at the build type's -O level.
const FAKE_THREADS_H: &str = "#include <cstddef>
#include <new>
class Task { public: virtual void execute() = 0; };
class TaskHolder
{
    char data_[96];
public:
    TaskHolder() {}

    template <class T>
    TaskHolder (T &&y)
    {
        assign(y);
    }

    template <class T>
    TaskHolder& operator= (T &&y)
    {
        assign(y);
    }

private:
    template <class T>
    void assign (T &y) { new (data_) T(y); }
};
";

const FAKE_MAIN_CC: &str = "#include <memory>
#include \"threads.h\"
template <class O> struct Pool { static size_t memsize(size_t c) { return c * sizeof(O); } };
struct SlowTask : Task { void execute() {} };
class AcceptTask : public Task
{
    std::unique_ptr<Pool<int> > pool;
public:
    static size_t
    pool_size(size_t capacity)
    {
        decltype(pool)::element_type::memsize(capacity);
    }

    void execute() {}
};
int main() { TaskHolder h; SlowTask s; h = s; return AcceptTask::pool_size(3) == 3 * sizeof(int) ? 0 : 1; }
";

/// `cmake -S SRC -B DIR ...`: remembers the source and the arguments.
const FAKE_CMAKE: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -S) src=$2; shift ;; -B) dir=$2; shift ;; *) args="$args $1" ;; esac
  shift
done
mkdir -p "$dir" && echo "$src" > "$dir/source" && echo "$args" > "$dir/cmake.args"
"#;

/// `make -C DIR -j N`: compiles the remembered source like the Makefile would.
const FAKE_MAKE: &str = r#"#!/bin/sh
dir=$2
src=$(cat "$dir/source")
case "$(cat "$dir/cmake.args")" in *-O2*) opt=-O2 ;; *) opt=-O0 ;; esac
exec g++ -std=gnu++11 $opt -Wreturn-type -o "$dir/server-demo" "$src/main.cc" 2> "$dir/warnings.txt"
"#;

#[test]
fn build_reference_patches_a_copy_and_builds_debug_and_o2() {
    let tmp = std::env::temp_dir().join(format!("conn-daemon-build-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (src, out, bin) = (tmp.join("server-demo"), tmp.join("out"), tmp.join("bin"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        src.join("CMakeLists.txt"),
        "add_executable(server-demo main.cc main_opts.c threads.cc)\n",
    )
    .unwrap();
    std::fs::write(src.join("main.cc"), FAKE_MAIN_CC).unwrap();
    std::fs::write(src.join("threads.h"), FAKE_THREADS_H).unwrap();
    for (name, body) in [
        ("cmake", FAKE_CMAKE),
        ("make", FAKE_MAKE),
        ("dpkg-query", "#!/bin/sh\nprintf 'install ok installed'\n"),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .arg(Path::new(ROOT).join("bench/build-reference.sh"))
        .args([&src, &out])
        .env("PATH", path)
        .output()
        .expect("run bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );

    // It says where the binaries are, and they are there.
    let (debug, release) = (
        out.join("debug/server-demo"),
        out.join("release/server-demo"),
    );
    assert!(
        stdout.contains(&format!("debug:   {}", debug.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("release: {}", release.display())),
        "{stdout}"
    );
    // Debug from the untouched checkout, as upstream's build.sh: both warnings.
    assert_eq!(
        std::fs::read_to_string(src.join("main.cc")).unwrap(),
        FAKE_MAIN_CC
    );
    assert_eq!(
        std::fs::read_to_string(src.join("threads.h")).unwrap(),
        FAKE_THREADS_H
    );
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert!(read("debug/cmake.args").contains("CMAKE_BUILD_TYPE:STRING=Debug"));
    assert_eq!(
        read("debug/warnings.txt")
            .matches("no return statement")
            .count(),
        2,
        "{}",
        read("debug/warnings.txt")
    );
    // Release -O2 from the patched copy: no warning left, and it runs.
    let args = read("release/cmake.args");
    assert!(
        args.contains("CMAKE_BUILD_TYPE:STRING=Release") && args.contains("-O2"),
        "{args}"
    );
    assert_eq!(read("release/warnings.txt"), "");
    assert!(read("src-O2/threads.h").contains("        assign(y);\n        return *this;\n    }"));
    assert!(read("src-O2/main.cc")
        .contains("        return decltype(pool)::element_type::memsize(capacity);"));
    let status = Command::new(&release).status().expect("run the -O2 build");
    assert!(status.success(), "{status:?}");

    // A second run over the same OUT starts from a fresh copy: still applies.
    let again = Command::new("bash")
        .arg(Path::new(ROOT).join("bench/build-reference.sh"))
        .args([&src, &out])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The tracked Markdown files a reader follows links through: the README and
/// the docs (not libev's tree, not the fuzz corpora).
fn markdown_files() -> Vec<PathBuf> {
    tracked_files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md") && !f.starts_with("vendor"))
        .collect()
}

/// Lines outside fenced code blocks, where `#` starts a comment, not a heading.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push(line);
        }
    }
    lines
}

/// The anchors GitHub gives a file's headings: lower case, punctuation but
/// `-` and `_` dropped, spaces to `-`, a repeated heading suffixed `-1`, `-2`.
fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in prose_lines(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = out
            .iter()
            .filter(|a| **a == slug || a.starts_with(&format!("{slug}-")))
            .count();
        out.push(if n == 0 { slug } else { format!("{slug}-{n}") });
    }
    out
}

/// The targets of the inline links `[text](target)` of a Markdown text,
/// outside code blocks.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            targets.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// Every relative link of the README and the docs leads somewhere: the file
/// exists, and an anchor (`path#heading`, `#heading`) names one of its
/// headings.
#[test]
fn every_link_in_the_docs_leads_to_a_file_and_heading() {
    let root = Path::new(ROOT);
    let mut broken = Vec::new();
    let mut seen = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(root.join(&file)).unwrap();
        let dir = file.parent().unwrap_or(Path::new(""));
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            seen += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            let full = root.join(&resolved);
            if !full.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if !anchor.is_empty() && full.extension().is_some_and(|e| e == "md") {
                let theirs = std::fs::read_to_string(&full).unwrap();
                if !anchors(&theirs).iter().any(|a| a == anchor) {
                    broken.push(format!(
                        "{}: {target}: no heading with that anchor",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(seen >= 30, "found only {seen} links: the scan is broken");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_github() {
    let text = "# Top\n## The check: `contrib/systemd/check.sh`\n```sh\n# a comment\n```\n\
                ## Scaling across cores (`conn-bench --threads`)\n## Top\n";
    assert_eq!(
        anchors(text),
        [
            "top",
            "the-check-contribsystemdchecksh",
            "scaling-across-cores-conn-bench---threads",
            "top-1"
        ]
    );
    assert_eq!(
        link_targets("see [a](x.md#b) and [c](#d)\n```\n[e](f)\n```\n"),
        ["x.md#b", "#d"]
    );
}

/// The numbers written just before `unit` in `text` ("835.4 MB" -> 835.4;
/// thousands separators allowed).
fn figures_before(text: &str, unit: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(unit) {
        let head = &text[..i];
        let start = head
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
            .map_or(0, |j| j + 1);
        if let Ok(v) = head[start..].replace(',', "").parse() {
            out.push(v);
        }
    }
    out
}

/// The numbers written just after `prefix` in `text`.
fn figures_after(text: &str, prefix: &str) -> Vec<f64> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let tail = &text[i + prefix.len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
                .unwrap_or(tail.len());
            tail[..end]
                .trim_end_matches(['.', ','])
                .replace(',', "")
                .parse()
                .ok()
        })
        .collect()
}

/// One figure per fact, in one place: the measured facts that documents
/// once gave two different values for each appear in their one home only,
/// the others link to it.
#[test]
fn each_measured_fact_is_stated_in_one_place() {
    type Finds = fn(&str) -> bool;
    let facts: [(&str, &str, Finds); 3] = [
        (
            "systemd-analyze security's exposure level",
            "docs/packaging.md",
            |t| !figures_after(t, "exposure ").is_empty(),
        ),
        (
            "the C++ reference's idle resident memory (hundreds of MB)",
            "docs/performance.md",
            |t| {
                figures_before(t, " MB")
                    .iter()
                    .any(|v| (800.0..1000.0).contains(v))
            },
        ),
        (
            "the C++ reference's user-space instructions per request",
            "docs/performance.md",
            |t| {
                let count = |v: &f64| (2000.0..10_000.0).contains(v);
                figures_after(t, "reference about ").iter().any(count)
                    || t.lines().any(|l| {
                        l.contains("instructions") && figures_before(l, " |").iter().any(count)
                    })
            },
        ),
    ];
    let root = Path::new(ROOT);
    let docs: Vec<(PathBuf, String)> = markdown_files()
        .into_iter()
        .filter(|f| f.starts_with("docs") || f == Path::new("README.md"))
        .map(|f| {
            let text = std::fs::read_to_string(root.join(&f)).unwrap();
            (f, text)
        })
        .collect();
    assert!(docs.len() >= 10, "{docs:?}");
    let mut wrong = Vec::new();
    for (fact, home, finds) in facts {
        let places: Vec<String> = docs
            .iter()
            .filter(|(_, text)| finds(text))
            .map(|(f, _)| f.display().to_string())
            .collect();
        if places != [home] {
            wrong.push(format!(
                "{fact}: stated in {places:?}, its one place is {home}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn finds_figures() {
    assert_eq!(
        figures_before("835.4 MB and 1,200 MB", " MB"),
        [835.4, 1200.0]
    );
    assert_eq!(
        figures_after("exposure 1.8, exposure x", "exposure "),
        [1.8]
    );
    assert_eq!(
        figures_after("reference about 2,750; a", "reference about "),
        [2750.0]
    );
}
