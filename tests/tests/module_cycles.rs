//! No `use crate::` import cycle among the top-level modules of any workspace crate.
//!
//! Reads every workspace member's `src/**/*.rs`, builds the graph "module A uses `crate::B`"
//! (top-level modules: `src/a.rs`, `src/a/mod.rs` and everything under `src/a/` are `a`;
//! `super::` in a submodule is its parent, and `crate::Name` of an item that `lib.rs` re-exports
//! is the module it comes from), leaves out `#[cfg(test)]` modules and comments, and fails
//! naming each cycle, crate by crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level module of each source file of a crate's `src`, and the file's text.
fn sources(src: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![(src.to_path_buf(), None::<String>)];
    while let Some((dir, module)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                // `src/bin` holds binaries, each a crate of its own.
                if module.is_none() && name == "bin" {
                    continue;
                }
                stack.push((path, Some(module.clone().unwrap_or(name))));
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let top = match &module {
                    Some(module) => module.clone(),
                    None if stem == "lib" || stem == "main" => continue,
                    None => stem.to_owned(),
                };
                if let Ok(text) = fs::read_to_string(&path) {
                    out.push((top, text));
                }
            }
        }
    }
    out
}

/// The text without comments and without `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{')
            })
        {
            // Skip the module: up to its closing brace.
            let mut depth = 0i32;
            for line in lines.by_ref() {
                let line = line.split("//").next().unwrap_or_default();
                depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                if depth <= 0 && line.contains('}') {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The first path segments after each `crate::` (and inside `crate::{…}`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // Not part of another path such as `my_crate::`.
        let before = code.get(..at).and_then(|b| b.chars().next_back());
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code.get(at + "crate::".len()..).unwrap_or_default();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut first = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        if !item.is_empty() {
                            out.push(std::mem::take(&mut item));
                        }
                        first = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && first {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        out.push(std::mem::take(&mut item));
                        first = false;
                    }
                }
            }
            if !item.is_empty() {
                out.push(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Items `lib.rs` re-exports from a module (`pub use module::{A, B};`): item → module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let code = code(lib);
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(path) = statement
            .strip_prefix("pub use ")
            .or_else(|| statement.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let path = path
            .trim_start_matches("crate::")
            .trim_start_matches("self::");
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item);
            let name = name.rsplit("::").next().unwrap_or(name).trim();
            if !name.is_empty() {
                out.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    out
}

/// The cycles (strongly connected components of more than one module, or a module that only
/// reaches itself through others) of a graph, each as a path `a -> b -> … -> a`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // Reachability by depth-first search from each node; small graphs.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(node) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|node| (node, reach(node))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for node in graph.keys() {
        if done.contains(node) || !reaches[node].contains(node) {
            continue;
        }
        let component: BTreeSet<String> = reaches[node]
            .iter()
            .filter(|other| reaches.get(other).is_some_and(|r| r.contains(node)))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        // One cycle through `node`, by breadth-first search inside the component.
        let mut previous: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([node.clone()]);
        'search: while let Some(current) = queue.pop_front() {
            for next in graph.get(&current).into_iter().flatten() {
                if !component.contains(next) {
                    continue;
                }
                if next == node {
                    previous.insert(node.clone() + "#end", current.clone());
                    break 'search;
                }
                if !previous.contains_key(next) {
                    previous.insert(next.clone(), current.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut back = Vec::new();
        let mut at = previous.get(&(node.clone() + "#end")).cloned();
        while let Some(current) = at.filter(|current| current != node) {
            at = previous.get(&current).cloned();
            back.push(current);
        }
        back.reverse();
        let mut path = vec![node.clone()];
        path.extend(back);
        path.push(node.clone());
        let others: Vec<&String> = component.iter().filter(|m| !path.contains(m)).collect();
        let mut line = path.join(" -> ");
        if !others.is_empty() {
            line.push_str(&format!(
                " (the cycle's component also holds {})",
                others
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(line);
    }
    out
}

/// The graph of a crate's top-level modules.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = fs::read_to_string(src.join("lib.rs"))
        .or_else(|_| fs::read_to_string(src.join("main.rs")))
        .unwrap_or_default();
    let reexported = reexports(&lib);
    let files = sources(src);
    let modules: BTreeSet<String> = files.iter().map(|(module, _)| module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        let uses = graph.entry(module.clone()).or_default();
        for name in crate_paths(&code(text)) {
            let target = if modules.contains(&name) {
                Some(name)
            } else {
                reexported.get(&name).cloned()
            };
            if let Some(target) =
                target.filter(|target| target != module && modules.contains(target))
            {
                uses.insert(target);
            }
        }
    }
    graph
}

/// The workspace's member directories.
fn members(root: &Path) -> Vec<PathBuf> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("the workspace manifest");
    let list = manifest
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("a members list");
    list.split(',')
        .map(|member| member.trim().trim_matches('"'))
        .filter(|member| !member.is_empty() && !member.starts_with('#'))
        .map(|member| root.join(member))
        .collect()
}

#[test]
fn no_crate_has_a_module_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    for member in members(&root) {
        let src = member.join("src");
        if !src.is_dir() {
            continue;
        }
        let name = member
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = cycles(&module_graph(&src));
        if found.is_empty() {
            println!("{name}: no module cycle");
        } else {
            for cycle in &found {
                println!("{name}: cycle {cycle}");
            }
            failures.push(format!("{name}:\n  {}", found.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "modules that import each other through `crate::` (move what both need into a leaf \
         module):\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_checker_finds_cycles_and_paths() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), ["a -> b -> c -> a"]);
    assert_eq!(
        crate_paths("use crate::{a::X, b, c::{d, e}};\nlet x = crate::f::g(); my_crate::h;"),
        ["a", "b", "c", "f"]
    );
    assert_eq!(
        code(
            "use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nuse crate::d;"
        ),
        "use crate::a;\nuse crate::d;\n"
    );
    assert_eq!(
        reexports("pub use config::{A, B};\npub use error::WorkerError;")["B"],
        "config"
    );
}
