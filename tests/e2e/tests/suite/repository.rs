//! The repository is self-contained: a clone in an empty directory has every
//! file its build, tests and docs refer to. Nothing names a path outside the
//! clone, and every relative link in the docs resolves to a file in it.

use std::path::{Component, Path, PathBuf};

/// The repository root (this crate is `tests/e2e`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// Folders that are built, installed or run here, not part of the sources.
const SKIPPED_DIRS: &[&str] = &["target", ".git", ".venv", ".run", "node_modules"];

/// Every text file of the repository, as (path relative to the root, text).
fn text_files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name();
            if entry.file_type().unwrap().is_dir() {
                if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                    dirs.push(path);
                }
                continue;
            }
            // Binary files (the model, images) are not read.
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
            }
        }
    }
    out.sort();
    out
}

/// `base` joined with `rel`, normalised lexically; `None` once it climbs
/// above the repository root (`base` is relative to the root).
fn resolve(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<_> = base
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    for c in Path::new(rel).components() {
        match c {
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(p) => parts.push(p.to_owned()),
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// Each `../`-relative path in `text` (the longest run of path characters
/// starting at a `../`).
fn parent_paths(text: &str) -> Vec<&str> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("../") {
        // Only at the start of a path (`../x`, or `"/../x"` as a Rust
        // `concat!` writes it): `a/../b` is the same path going on.
        let mut before = rest[..i].chars().rev();
        let starts = match before.next() {
            None => true,
            Some('/') => before.next().is_none_or(|c| !is_path(c)),
            Some(c) => !is_path(c),
        };
        let len = rest[i..].find(|c| !is_path(c)).unwrap_or(rest.len() - i);
        if starts {
            out.push(&rest[i..i + len]);
        }
        rest = &rest[i + len.max(3)..];
    }
    out
}

/// The crate directory (holding `Cargo.toml`) that `file` belongs to, if any.
fn crate_dir(root: &Path, file: &Path) -> Option<PathBuf> {
    file.ancestors()
        .skip(1)
        .find(|d| root.join(d).join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

#[test]
fn no_file_refers_to_a_path_outside_the_repository() {
    let root = root();
    let files = text_files(&root);
    assert!(
        files.len() > 100,
        "only {} files found under {root:?}",
        files.len()
    );
    // Documents that sit beside the developers' checkout but are not in a
    // user's clone (named in pieces so this file does not name them).
    let outside: Vec<String> = ["DESIGN", "ENVIRONMENT", "STYLE"]
        .iter()
        .map(|n| format!("{n}.{}", "md"))
        .collect();
    let mut found = Vec::new();
    for (file, text) in &files {
        for name in &outside {
            if text.contains(name.as_str()) {
                found.push(format!(
                    "{}: names {name}, which is not in the repository",
                    file.display()
                ));
            }
        }
        let dir = file.parent().unwrap_or(Path::new(""));
        // A Rust path such as `concat!(env!("CARGO_MANIFEST_DIR"), "/../x")`
        // is relative to its crate, anything else to its own folder.
        let crate_dir = crate_dir(&root, file);
        for rel in parent_paths(text) {
            let inside = resolve(dir, rel).is_some()
                || crate_dir.as_deref().and_then(|c| resolve(c, rel)).is_some();
            if !inside {
                found.push(format!(
                    "{}: `{rel}` leads outside the repository",
                    file.display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The relative targets of the Markdown links in `text`: `[text](target)`
/// without a scheme, anchors and titles cut off.
fn markdown_links(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            let target = target.split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                out.push(target);
            }
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves_to_a_file_in_the_repository() {
    let root = root();
    let mut broken = Vec::new();
    let mut links = 0;
    for (file, text) in text_files(&root) {
        if file.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let dir = file.parent().unwrap_or(Path::new(""));
        for target in markdown_links(&text) {
            links += 1;
            match resolve(dir, target) {
                Some(p) if root.join(&p).exists() => {}
                _ => broken.push(format!("{}: ({target})", file.display())),
            }
        }
    }
    assert!(links > 10, "only {links} links found");
    assert!(
        broken.is_empty(),
        "links to nothing in the repository:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_path_checks_catch_what_they_are_for() {
    // The pattern the spam classifier once used for its corpus.
    let text = r#"concat!(env!("CARGO_MANIFEST_DIR"), "/../../../elsewhere/data/x.tsv")"#;
    assert_eq!(parent_paths(text), vec!["../../../elsewhere/data/x.tsv"]);
    let krate = Path::new("shared/spam-classifier");
    assert_eq!(resolve(krate, "../../../elsewhere/data/x.tsv"), None);
    assert_eq!(
        resolve(krate, "../../docs/a.md"),
        Some(PathBuf::from("docs/a.md"))
    );
    assert_eq!(parent_paths("see a/../b and ../c"), vec!["../c"]);
    assert_eq!(
        markdown_links("[a](../x.md#y) [b](https://e.x) [c](y.md \"t\")"),
        vec!["../x.md", "y.md"]
    );
}

/// The rows of the Markdown table under `heading` in `text`: each row's
/// cells, trimmed, the header and separator rows left out.
fn table_rows(text: &str, heading: &str) -> Vec<Vec<String>> {
    let after = text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in docs/architecture.md"))
        .1;
    after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The text between the first pair of backticks in `cell`.
fn code(cell: &str) -> &str {
    cell.split('`').nth(1).unwrap_or("")
}

#[test]
fn architecture_md_lists_every_crate_of_the_workspace_and_no_other() {
    let root = root();
    let members = members(&root);
    assert!(members.len() > 10, "members: {members:?}");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let rows = table_rows(&doc, "## Crates");
    let documented: Vec<(&str, &str)> = rows.iter().map(|r| (code(&r[0]), code(&r[1]))).collect();
    let mut wrong = Vec::new();
    for m in &members {
        let toml = std::fs::read_to_string(root.join(m).join("Cargo.toml")).unwrap();
        let name = toml
            .split("name = \"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        if !documented.contains(&(m.as_str(), name)) {
            wrong.push(format!(
                "`{m}` (`{name}`) is a workspace member but not a row of the crates table"
            ));
        }
    }
    for (path, name) in &documented {
        if !members.iter().any(|m| m == path) {
            wrong.push(format!(
                "`{path}` (`{name}`) is in the crates table but not a workspace member"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn architecture_md_lists_every_subject_and_stream_of_the_bus() {
    let root = root();
    let subjects = std::fs::read_to_string(root.join("shared/bus/src/subjects.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    // Every constant naming a subject (up to its first wildcard) or a stream.
    let names: Vec<&str> = subjects
        .lines()
        .filter(|l| l.starts_with("pub const") && l.contains(": &str = \""))
        .map(|l| l.split('"').nth(1).unwrap())
        .filter(|v| v.starts_with("interop.v1.") || v.starts_with("INTEROP_"))
        .map(|v| {
            v.split(['*', '>', '{'])
                .next()
                .unwrap()
                .trim_end_matches('.')
        })
        .collect();
    assert!(names.len() > 15, "constants: {names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/architecture.md: {missing:?}"
    );
    // And every subject of the subjects table comes from a constant.
    let table = table_rows(&doc, "## Subjects, streams and consumers");
    assert!(table.len() > 8);
    for row in table {
        let subject = code(&row[0]);
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("interop.v1.") && subject.starts_with(n)),
            "`{subject}` in docs/architecture.md is no subject of shared/bus/src/subjects.rs"
        );
    }
}

/// The workspace's members (paths), from the root `Cargo.toml`.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    manifest
        .split_once("members = [")
        .unwrap()
        .1
        .split_once(']')
        .unwrap()
        .0
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn dependencies_point_down_only() {
    // Floors: shared/ (what the product links) < services/ and loadtest <
    // tests/ (harnesses). tests/support starts servers for any crate's tests
    // and depends on none of ours.
    let root = root();
    let members = members(&root);
    let name_of = |m: &str| {
        let toml = std::fs::read_to_string(root.join(m).join("Cargo.toml")).unwrap();
        toml.split("name = \"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    };
    let path_of: std::collections::HashMap<String, String> =
        members.iter().map(|m| (name_of(m), m.clone())).collect();
    let mut wrong = Vec::new();
    for m in &members {
        let toml = std::fs::read_to_string(root.join(m).join("Cargo.toml")).unwrap();
        for line in toml.lines() {
            let Some(dep) = line
                .split_whitespace()
                .next()
                .filter(|d| d.starts_with("interop-"))
            else {
                continue;
            };
            let Some(to) = path_of.get(dep) else { continue };
            let ok = if m == "tests/support" {
                false
            } else if to == "tests/support" || m.starts_with("tests/") {
                true
            } else if m.starts_with("shared/") {
                to.starts_with("shared/")
            } else {
                // A service or loadtest: shared crates only, never a sibling.
                to.starts_with("shared/")
            };
            if !ok {
                wrong.push(format!("{m} depends on {to} ({dep})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that do not point down:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_plain_cargo_build_builds_the_product_and_no_test_harness() {
    let root = root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let defaults: Vec<&str> = manifest
        .split_once("default-members = [")
        .expect("the workspace sets default-members")
        .1
        .split_once(']')
        .unwrap()
        .0
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    let product: Vec<String> = members(&root)
        .into_iter()
        .filter(|m| !m.starts_with("tests/"))
        .collect();
    assert_eq!(
        defaults, product,
        "default-members must be every member outside tests/, in order"
    );
}
