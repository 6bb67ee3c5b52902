//! The module graph drawn from the code's own imports is a DAG stacked as DESIGN.md §1 and
//! ARCHITECTURE.md say: a module imports only from its own layer or below, and no two modules (or
//! files) import each other, directly or round a loop.
//!
//! The graph is read from `src/` as text: every `crate::…` and `super::…` path (in `use` trees
//! and inline), outside comments and unit-test modules, resolved to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A top-level module may import its own layer and the ones below.
const LAYERS: &[(&str, &[&str])] = &[
    ("floor", &["config", "model", "util"]),
    (
        "stores and primitives",
        &[
            "printer",
            "transport",
            "journal",
            "github",
            "tracker",
            "cost",
            "secrets",
            "schedule",
        ],
    ),
    (
        "workers, hosts and repositories",
        &[
            "provider",
            "connector",
            "bootstrap",
            "agent",
            "git",
            "workflow",
            "forge",
        ],
    ),
    ("orchestration", &["orchestrator"]),
    (
        "composition and reports",
        &["error", "project", "report", "demo"],
    ),
    ("the HTTP server", &["serve"]),
    ("command line", &["cli", "commands", "crate"]),
];

/// Upward imports still being moved off (from, to), while the layering is under way. Each one
/// listed here is allowed; every other upward import fails. The list only shrinks.
const NOT_YET_MOVED: &[(&str, &str)] = &[];

type Module = Vec<String>;

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// Every module of the crate, by path (`[]` is the crate root), with its file.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = vec![];
    walk(src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap().with_extension("");
            let mut path: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                path.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                path.pop();
            }
            (path, f)
        })
        .collect()
}

/// The source without comments, string literals and the unit-test module at the end.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'') {
            // A string literal (raw strings with `#` delimiters are ended by their `"#`).
            let raw_hashes = text[..i].chars().rev().take_while(|&c| c == '#').count();
            let is_raw = text[..i - raw_hashes.min(i)].ends_with('r');
            i += 1;
            while i < b.len() {
                if !is_raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' && b[i + 1..].iter().take(raw_hashes).all(|&c| c == b'#') {
                    i += 1 + if is_raw { raw_hashes } else { 0 };
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The paths of a use tree or inline path that starts right after `crate::`/`super::`:
/// `a::b`, `a::{b, c::d}`, nested braces included.
fn paths(text: &str) -> Vec<Vec<String>> {
    fn tree(s: &[u8], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        loop {
            while *i < s.len() && s[*i].is_ascii_whitespace() {
                *i += 1;
            }
            if *i < s.len() && s[*i] == b'{' {
                *i += 1;
                loop {
                    tree(s, i, &path, out);
                    while *i < s.len() && s[*i].is_ascii_whitespace() {
                        *i += 1;
                    }
                    match s.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b'}') => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                    while *i < s.len() && s[*i].is_ascii_whitespace() {
                        *i += 1;
                    }
                    if s.get(*i) == Some(&b'}') {
                        *i += 1;
                        return;
                    }
                }
            }
            let start = *i;
            while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
                *i += 1;
            }
            if *i == start {
                break;
            }
            path.push(String::from_utf8_lossy(&s[start..*i]).into_owned());
            if s[*i..].starts_with(b"::") {
                *i += 2;
            } else {
                break;
            }
        }
        out.push(path);
    }
    let mut out = vec![];
    tree(text.as_bytes(), &mut 0, &[], &mut out);
    out
}

/// Edges between modules: which module each one imports from.
fn graph(mods: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |path: &[String]| -> Option<Module> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| mods.contains_key(p))
    };
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, file) in mods {
        let text = code(&std::fs::read_to_string(file).unwrap());
        let is_dir_module = file.file_stem().is_some_and(|s| s == "mod");
        let parent: Module = if is_dir_module || m.is_empty() {
            m[..m.len().saturating_sub(1)].to_vec()
        } else {
            m[..m.len() - 1].to_vec()
        };
        let mut targets = BTreeSet::new();
        for (kw, base) in [("crate::", vec![]), ("super::", parent)] {
            for (at, _) in text.match_indices(kw) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                for p in paths(&text[at + kw.len()..]) {
                    let full: Vec<String> = base.iter().cloned().chain(p).collect();
                    if let Some(t) = resolve(&full)
                        && !m.starts_with(&t)
                        && !t.starts_with(m)
                    {
                        targets.insert(t);
                    }
                }
            }
        }
        edges.insert(m.clone(), targets);
    }
    edges
}

/// The cycles of a graph: its strongly connected components of more than one node.
fn cycles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    // Tarjan's algorithm, iterative enough for a crate's module count.
    struct St<N> {
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(v: &N, e: &BTreeMap<N, BTreeSet<N>>, st: &mut St<N>) {
        let i = st.index.len();
        st.index.insert(v.clone(), i);
        st.low.insert(v.clone(), i);
        st.stack.push(v.clone());
        st.on.insert(v.clone());
        for w in e.get(v).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(w, e, st);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = vec![];
            loop {
                let w = st.stack.pop().unwrap();
                st.on.remove(&w);
                comp.push(w.clone());
                if &w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        out: vec![],
    };
    for v in edges.keys() {
        if !st.index.contains_key(v) {
            visit(v, edges, &mut st);
        }
    }
    st.out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn top(m: &Module) -> String {
    m.first().cloned().unwrap_or_else(|| "crate".into())
}

#[test]
fn every_top_level_module_has_a_layer() {
    let mods = modules(&src());
    let unplaced: BTreeSet<String> = mods
        .keys()
        .map(top)
        .filter(|t| layer_of(t).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer in tests/test_layers.rs LAYERS (and ARCHITECTURE.md): {unplaced:?}"
    );
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let mods = modules(&src());
    let mut upward = vec![];
    for (from, tos) in graph(&mods) {
        for to in tos {
            let (lf, lt) = (layer_of(&top(&from)), layer_of(&top(&to)));
            if let (Some(lf), Some(lt)) = (lf, lt)
                && lt > lf
                && !NOT_YET_MOVED.contains(&(top(&from).as_str(), top(&to).as_str()))
            {
                upward.push(format!(
                    "{} ({}) imports {} ({})",
                    name(&from),
                    LAYERS[lf].0,
                    name(&to),
                    LAYERS[lt].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up a layer:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let mods = modules(&src());
    let edges = graph(&mods);
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &edges {
        for to in tos {
            if top(from) != top(to)
                && !NOT_YET_MOVED.contains(&(top(from).as_str(), top(to).as_str()))
            {
                tops.entry(top(from)).or_default().insert(top(to));
            }
        }
    }
    let files: Vec<Vec<String>> = cycles(&edges)
        .iter()
        .map(|c| c.iter().map(name).collect())
        .collect();
    assert!(
        files.is_empty(),
        "modules that import each other: {files:?}"
    );
    let tops = cycles(&tops);
    assert!(tops.is_empty(), "top-level modules in a cycle: {tops:?}");
}

/// The checker itself: the graph reader sees `use` trees, inline paths and `super::`, and the
/// cycle finder finds a loop.
#[test]
fn the_layer_check_reads_imports_and_finds_loops() {
    let p = paths("a::{b, c::{d, e}, f::g}");
    assert_eq!(
        p,
        [
            vec!["a", "b"],
            vec!["a", "c", "d"],
            vec!["a", "c", "e"],
            vec!["a", "f", "g"]
        ]
    );
    let c = code(
        "use crate::x; // crate::y\nlet s = \"crate::z\";\n#[cfg(test)]\nmod tests { crate::w }",
    );
    assert!(c.contains("crate::x") && !c.contains("crate::y") && !c.contains("crate::z"));
    assert!(!c.contains("crate::w"));
    let mut e: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
    e.insert(1, [2].into());
    e.insert(2, [3].into());
    e.insert(3, [1].into());
    e.insert(4, [1].into());
    assert_eq!(cycles(&e), vec![vec![1, 2, 3]]);
    e.get_mut(&3).unwrap().clear();
    assert!(cycles(&e).is_empty());
}
