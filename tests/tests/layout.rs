//! Guard rails on the workspace's shape, read from the sources themselves:
//!
//! * no import circle between the source files of a product crate (through `crate::` and `super::`
//!   paths; a folder's `mod.rs` stands for the folder), so each file can be read and changed from
//!   its dependencies up; a stricter check (sibling folders that reach into each other, e.g.
//!   `nodes` ⇄ `dashboard` through different files) is kept as an ignored test to run by hand;
//! * no product source file over 800 lines.
//!
//! Function length is clippy's job (`too_many_lines`, threshold in `clippy.toml`).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The product crates: what ships in the three binaries.
const PRODUCT: &[&str] = &[
    "shared", "client", "host", "store", "worker", "agent", "tui",
];
const MAX_FILE_LINES: usize = 800;

type ModPath = Vec<String>;

/// Every source file of a crate with its module path (`src/a/b.rs` and `src/a/b/mod.rs` → a::b).
fn modules(src: &Path) -> Vec<(ModPath, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            let last = parts.last().cloned().unwrap();
            if last == "mod" || last == "lib" || last == "main" {
                parts.pop();
            }
            if parts.first().is_some_and(|f| f == "bin") {
                continue;
            }
            out.push((parts, p));
        }
    }
    out
}

/// The paths a use-tree names, e.g. `a::{b::C, d}` → [a,b,C], [a,d].
fn expand(tree: &str) -> Vec<ModPath> {
    fn parse(s: &[char], i: &mut usize, prefix: &ModPath, out: &mut Vec<ModPath>) {
        let mut path = prefix.clone();
        loop {
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if *i < s.len() && s[*i] == '{' {
                *i += 1;
                loop {
                    parse(s, i, &path, out);
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    match s.get(*i) {
                        Some(',') => *i += 1,
                        Some('}') => {
                            *i += 1;
                            break;
                        }
                        _ => return,
                    }
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    if s.get(*i) == Some(&'}') {
                        *i += 1;
                        break;
                    }
                }
                return;
            }
            let start = *i;
            while *i < s.len() && (s[*i].is_alphanumeric() || s[*i] == '_') {
                *i += 1;
            }
            if *i == start {
                out.push(path);
                return;
            }
            path.push(s[start..*i].iter().collect());
            if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
                *i += 2;
            } else {
                out.push(path);
                return;
            }
        }
    }
    let chars: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    parse(&chars, &mut 0, &Vec::new(), &mut out);
    out
}

/// Module paths a file refers to, absolute within its crate.
fn references(me: &ModPath, text: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (key, base) in [("crate::", Vec::new()), ("super::", parent(me))] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(key) {
            let before = rest[..at].chars().last();
            rest = &rest[at + key.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut base = base.clone();
            let mut tail = rest;
            // super::super::x
            while key == "super::" && tail.starts_with("super::") {
                base = parent(&base);
                tail = &tail["super::".len()..];
            }
            for p in expand(tail) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
        }
    }
    out
}

fn parent(p: &ModPath) -> ModPath {
    p[..p.len().saturating_sub(1)].to_vec()
}

/// The deepest prefix of `path` that is a module of the crate.
fn module_of(path: &ModPath, known: &BTreeSet<ModPath>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
        .unwrap_or_default()
}

/// Edges between sibling modules, grouped by their parent: parent → (from → {to}).
type Graphs = BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>>;

fn graphs(krate: &Path) -> Graphs {
    let files = modules(&krate.join("src"));
    let known: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graphs::new();
    for (me, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for r in references(me, &text) {
            let target = module_of(&r, &known);
            let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < me.len() && common < target.len() {
                g.entry(me[..common].to_vec())
                    .or_default()
                    .entry(me[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    g
}

/// One cycle of `g`, if any, as the modules along it.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Edges between source files: file → the files it names (a module's `mod.rs` stands for it).
fn file_graph(krate: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = modules(&krate.join("src"));
    let known: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let name = |m: &ModPath| {
        if m.is_empty() {
            "lib".to_string()
        } else {
            m.join("::")
        }
    };
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (me, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for r in references(me, &text) {
            let target = module_of(&r, &known);
            if &target != me {
                g.entry(name(me)).or_default().insert(name(&target));
            }
        }
    }
    g
}

#[test]
fn no_import_circle_between_files() {
    let root = rbee_testkit::workspace_root();
    let mut circles = Vec::new();
    for krate in PRODUCT {
        if let Some(c) = cycle(&file_graph(&root.join(krate))) {
            circles.push(format!("{krate}: {}", c.join(" → ")));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles between files:\n{}",
        circles.join("\n")
    );
}

/// Stricter than the files: sibling modules (folders) must not reach into each other either.
#[test]
fn no_import_circle_between_sibling_modules() {
    let root = rbee_testkit::workspace_root();
    let mut circles = Vec::new();
    for krate in PRODUCT {
        for (parent, g) in graphs(&root.join(krate)) {
            if let Some(c) = cycle(&g) {
                let at = if parent.is_empty() {
                    "crate".to_string()
                } else {
                    parent.join("::")
                };
                circles.push(format!("{krate}: in {at}: {}", c.join(" → ")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_product_file_over_800_lines() {
    let root = rbee_testkit::workspace_root();
    let mut long = Vec::new();
    for krate in PRODUCT {
        for (_, file) in modules(&root.join(krate).join("src")) {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue; // unit tests kept beside their module
            }
            let n = std::fs::read_to_string(&file).unwrap().lines().count();
            if n > MAX_FILE_LINES {
                long.push(format!("{} ({n} lines)", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_FILE_LINES} lines: {long:?}");
}

#[test]
fn the_checker_sees_a_circle_and_reads_use_trees() {
    assert_eq!(
        expand("a::{b::C, d, e::{f, g}};"),
        vec![
            vec!["a".to_string(), "b".into(), "C".into()],
            vec!["a".into(), "d".into()],
            vec!["a".into(), "e".into(), "f".into()],
            vec!["a".into(), "e".into(), "g".into()],
        ]
    );
    let me: ModPath = vec!["x".into(), "y".into()];
    let refs = references(
        &me,
        "use super::z::W;\nlet v = crate::q::r();\n// crate::ignored\n",
    );
    assert!(
        refs.contains(&vec!["x".into(), "z".into(), "W".into()]),
        "{refs:?}"
    );
    assert!(refs.contains(&vec!["q".into(), "r".into()]), "{refs:?}");
    assert_eq!(refs.len(), 2, "{refs:?}");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
