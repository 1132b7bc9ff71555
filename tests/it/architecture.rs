//! The module structure that ARCHITECTURE.md describes, checked on the source: each
//! top-level module imports only modules of an earlier stage, and no two modules import
//! each other, directly or around a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules in data-path order. A module may use its own stage's modules only
/// when they are the same top-level module, and any module of an earlier stage.
const STAGES: &[&[&str]] = &[
    &["telemetry", "threads"],
    &["slide"],
    &["model"],
    &["grade", "build"],
    &["output", "synth"],
    &["grader", "dataset"],
    &["serve"],
    &["train"],
    &["bench"],
];

fn stage_of(top: &str) -> usize {
    STAGES
        .iter()
        .position(|s| s.contains(&top))
        .unwrap_or_else(|| panic!("src/{top} is not in STAGES: add it where it belongs"))
}

/// Every library source file, keyed by its module path (`serve::http::intake`).
fn modules() -> BTreeMap<String, PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            if parts == ["main"] {
                continue; // the binary, not a library module
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The source outside `#[cfg(test)]` modules and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest known module that `path` (a `::`-joined path) lies in.
fn resolve(modules: &BTreeMap<String, PathBuf>, path: &[&str]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// Module → the other modules it names through `crate::…` or `super::…`.
fn imports(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let mut graph = BTreeMap::new();
    for (name, path) in modules {
        let here: Vec<&str> = name.split("::").filter(|s| !s.is_empty()).collect();
        let is_dir_module = path.ends_with("mod.rs");
        // `super` of a file module is its folder's module; of a mod.rs, the folder above.
        let parent: Vec<&str> = if is_dir_module || here.is_empty() {
            here.iter()
                .copied()
                .take(here.len().saturating_sub(1))
                .collect()
        } else {
            here[..here.len() - 1].to_vec()
        };
        let text = code(path);
        let mut used = BTreeSet::new();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            for (i, _) in text.match_indices(prefix) {
                if prefix == "super::" && text[..i].ends_with("::") {
                    continue;
                }
                let rest = &text[i + prefix.len()..];
                // `super::{a, b}` or `crate::{a::b, c}`: every item of the group.
                let heads: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                    group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|item| item.trim().replace(' ', ""))
                        .collect()
                } else {
                    vec![
                        rest.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                            .collect(),
                    ]
                };
                for head in heads {
                    let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                    full.extend(head.split("::").map(ident).filter(|s| !s.is_empty()));
                    let full: Vec<&str> = full.iter().map(String::as_str).collect();
                    if let Some(target) = resolve(modules, &full)
                        && target != *name
                        && !target.is_empty()
                    {
                        used.insert(target);
                    }
                }
            }
        }
        // A folder module naming a child (`child::item`, `pub use child::…`) uses it too.
        if is_dir_module || here.is_empty() {
            for child in modules.keys() {
                let Some(last) = child
                    .strip_prefix(name.as_str())
                    .and_then(|r| r.strip_prefix(if name.is_empty() { "" } else { "::" }))
                    .filter(|r| !r.is_empty() && !r.contains("::"))
                else {
                    continue;
                };
                let named = text.match_indices(&format!("{last}::")).any(|(i, _)| {
                    !text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                });
                if named {
                    used.insert(child.clone());
                }
            }
        }
        graph.insert(name.clone(), used);
    }
    graph
}

#[test]
fn modules_import_only_earlier_stages_and_never_in_a_cycle() {
    let modules = modules();
    assert!(modules.contains_key("serve::http::intake"), "{modules:?}");
    let graph = imports(&modules);

    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        if from.is_empty() {
            continue; // lib.rs declares every module
        }
        for to in targets {
            let (a, b) = (top(from), top(to));
            if a != b && stage_of(&b) >= stage_of(&a) {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a later or the same stage:\n{}",
        upward.join("\n")
    );

    // Depth-first search for a back edge: any one is a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(node, true);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node, false);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys().filter(|k| !k.is_empty()) {
        if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}
