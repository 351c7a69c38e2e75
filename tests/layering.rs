//! The top-level modules of `src/` import each other without a cycle, and
//! `routing/` (the model every layer reads) depends only on the leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Every `.rs` file under `path` (or `path` itself).
fn sources(path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(fs::read_to_string(path).unwrap());
    }
}

/// The top-level modules a module's code names as `crate::X` (comments
/// left out).
fn imports(texts: &[String], modules: &BTreeSet<String>, own: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for text in texts {
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != own && modules.contains(&name) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if stem != "main" && stem != "lib" {
            modules.insert(stem);
        }
    }
    modules
        .iter()
        .map(|m| {
            let mut texts = Vec::new();
            let dir = src.join(m);
            if dir.is_dir() {
                sources(&dir, &mut texts);
            } else {
                sources(&src.join(format!("{m}.rs")), &mut texts);
            }
            (m.clone(), imports(&texts, &modules, m))
        })
        .collect()
}

/// A cycle through `node`, if any, as the path that closes it.
fn cycle(
    node: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == node) {
        let mut found = path[i..].to_vec();
        found.push(node.to_string());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in &graph[node] {
        if let Some(found) = cycle(next, graph, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn it_should_have_no_import_cycle_between_top_level_modules() {
    let graph = graph();
    assert!(graph.contains_key("routing") && graph.contains_key("proxy"));
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(found) = cycle(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}; graph: {graph:#?}", found.join(" -> "));
        }
    }
}

#[test]
fn it_should_keep_routing_on_the_leaves_only() {
    let graph = graph();
    let allowed: BTreeSet<String> = ["config", "balance", "log_limit", "preamble"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let extra: Vec<_> = graph["routing"].difference(&allowed).collect();
    assert!(extra.is_empty(), "routing imports {extra:?}");
}
