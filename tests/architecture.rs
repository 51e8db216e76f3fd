//! The module graph that ARCHITECTURE.md draws, checked against the code:
//! every reference from one top-level module to another points down the
//! layers listed in `LAYERS`, no modules import each other in a cycle at
//! any depth, and only `src/gpu` names wgpu.
//!
//! References are read from the source as text: `crate::a::b` paths (also
//! inside `use crate::{a, b}` groups), `super::` paths resolved against the
//! file's own module, and `wgtrain::` paths in the binary (`src/cli`).
//! Comment lines are skipped, so doc links do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules from the bottom up; a module may use only modules
/// of lower layers (and its own). `cli` is the binary.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["data", "metrics", "resources"],
    &["model"],
    &["optim"],
    &["backend"],
    &["cpu", "checkpoint", "parallel"],
    &["infer", "onnx"],
    &["gpu", "train"],
    &["compress", "tune"],
    &["device"],
    &["bench", "serve"],
    &["cli"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let p = entry.expect("reading src/").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under src/: `cpu/kernels.rs` is
/// `["cpu", "kernels"]`, `cpu/mod.rs` is `["cpu"]`, `main.rs` is `["cli"]`
/// (the binary's root), `lib.rs` is `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    match stem {
        "mod" => {}
        "main" if parts.is_empty() => parts.push("cli".into()),
        "lib" if parts.is_empty() => {}
        _ => parts.push(stem.to_string()),
    }
    parts
}

/// The identifier starting at `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Module paths referenced on one line by a file of module `me`, each as
/// the longest prefix that names a module in `modules`.
fn references(line: &str, me: &[String], binary: bool, modules: &BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let roots: &[&str] = if binary {
        &["wgtrain::", "super::"]
    } else {
        &["crate::", "super::"]
    };
    for root in roots {
        let mut rest = line;
        while let Some(i) = rest.find(root) {
            // Not part of a longer identifier (e.g. `mysuper::`).
            let before = rest[..i].chars().next_back();
            let after = &rest[i + root.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let base: Vec<String> = match *root {
                "super::" => {
                    let mut b = me.to_vec();
                    let mut a = after;
                    b.pop();
                    while let Some(more) = a.strip_prefix("super::") {
                        b.pop();
                        a = more;
                    }
                    let mut path = b;
                    collect(a, &mut path, modules, &mut found);
                    continue;
                }
                "wgtrain::" => Vec::new(),
                _ => Vec::new(),
            };
            let mut path = base;
            collect(after, &mut path, modules, &mut found);
        }
    }
    found
}

/// Follow `a::b::c` (or a `{a, b}` group) from `path`, pushing the longest
/// module prefix of each.
fn collect(s: &str, path: &mut Vec<String>, modules: &BTreeSet<Vec<String>>, found: &mut Vec<Vec<String>>) {
    if let Some(group) = s.strip_prefix('{') {
        let inner = &group[..group.find('}').unwrap_or(group.len())];
        for item in inner.split(',') {
            let mut p = path.clone();
            collect(item.trim(), &mut p, modules, found);
        }
        return;
    }
    let mut s = s;
    let mut best = if modules.contains(path) {
        Some(path.clone())
    } else {
        None
    };
    loop {
        let id = ident(s);
        if id.is_empty() || id == "self" {
            break;
        }
        path.push(id.to_string());
        if modules.contains(path) {
            best = Some(path.clone());
        } else {
            break;
        }
        match s[id.len()..].strip_prefix("::") {
            Some(more) if more.starts_with('{') => {
                collect(more, path, modules, found);
                return;
            }
            Some(more) => s = more,
            None => break,
        }
    }
    if let Some(b) = best {
        found.push(b);
    }
}

struct Graph {
    /// `from -> to -> one place that makes the edge (file:line)`.
    edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).expect("under src/")))
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src/");
        let me = module_of(rel);
        if me.is_empty() {
            // lib.rs only declares and re-exports the modules.
            continue;
        }
        let binary = me[0] == "cli";
        let text = std::fs::read_to_string(f).expect("reading a source file");
        // Library paths as the binary sees them: `wgtrain::x` is `x`, and
        // its own modules are under `cli`.
        let lib_modules: BTreeSet<Vec<String>> = modules
            .iter()
            .filter(|m| m.first().is_some_and(|t| t != "cli"))
            .cloned()
            .collect();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with("//") {
                continue;
            }
            let mut refs = Vec::new();
            if binary {
                refs.extend(
                    references(line, &me, true, &lib_modules)
                        .into_iter()
                        .filter(|r| !line.contains(&format!("super::{}", r.join("::")))),
                );
                refs.extend(
                    references(line, &me, true, &modules)
                        .into_iter()
                        .filter(|r| r.first().is_some_and(|t| t == "cli")),
                );
            } else {
                refs.extend(references(line, &me, false, &modules));
            }
            for r in refs {
                // A module using its own ancestors' items is not an edge.
                if r.is_empty() || me.starts_with(&r) || r == me {
                    continue;
                }
                edges
                    .entry(me.clone())
                    .or_default()
                    .entry(r)
                    .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
            }
        }
    }
    Graph { edges }
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let g = graph();
    let mut bad = Vec::new();
    for (from, tos) in &g.edges {
        let Some(lf) = layer_of(&from[0]) else {
            bad.push(format!("module {} is not in LAYERS", from[0]));
            continue;
        };
        for (to, at) in tos {
            if to[0] == from[0] {
                continue;
            }
            match layer_of(&to[0]) {
                Some(lt) if lt < lf => {}
                Some(_) => bad.push(format!(
                    "{at}: {} uses {}, which is not below it",
                    from.join("::"),
                    to.join("::")
                )),
                None => bad.push(format!("module {} is not in LAYERS", to[0])),
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "dependencies that do not run one way:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_module_cycles_at_any_depth() {
    let g = graph();
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        n: &Vec<String>,
        g: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for next in g
            .edges
            .get(n)
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            match state.get(&next).copied().unwrap_or(0) {
                0 => visit(&next, g, state, stack, cycles),
                1 => {
                    let i = stack.iter().position(|s| *s == next).unwrap_or(0);
                    let names: Vec<String> = stack[i..].iter().map(|s| s.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), next.join("::")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in g.edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            visit(n, &g, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn only_the_gpu_module_names_wgpu() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src/");
        if rel.starts_with("gpu") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("reading a source file");
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") && line.contains("wgpu::") {
                bad.push(format!("{}:{}", rel.display(), n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "wgpu used outside src/gpu:\n{}", bad.join("\n"));
}

#[test]
fn the_reader_finds_the_edges_it_should() {
    // The checks above are only as good as the reader: a few edges that
    // must exist in any version of the crate.
    let g = graph();
    let has = |from: &str, to: &str| {
        let f: Vec<String> = from.split("::").map(String::from).collect();
        g.edges
            .get(&f)
            .is_some_and(|m| m.keys().any(|k| k.join("::").starts_with(to)))
    };
    assert!(has("train", "backend"), "train -> backend");
    assert!(has("cpu", "model"), "cpu -> model");
    assert!(has("cli::train", "train"), "cli::train -> train (wgtrain::train)");
    assert!(has("cli::train", "cli::args"), "cli::train -> cli::args (super::args)");
}
