//! The crate's shape, checked on every `cargo test`: no import cycle among modules, and no
//! function longer than [`MAX_FN_LINES`] lines.
//!
//! Modules are found as the compiler finds them, by following `mod` items from `src/lib.rs`
//! and `src/main.rs`, so a `#[cfg(test)]` module (inline or in a file of its own) and every
//! other `#[cfg(test)]` item is never read. An import is a path that starts with `crate::`,
//! `super::` or `self::`: in `use` items (groups included), in code, and inside macro
//! arguments. Two kinds of graph are checked:
//! - the top-level modules (`src/x.rs` or `src/x/` is `x`); `lib.rs` and `main.rs` are roots,
//!   not part of it;
//! - within each module that has submodules, those submodules among themselves
//!   (`src/config/a.rs` and `src/config/b.rs`). A child using an item of its parent
//!   (`super::Snapshot`) is no edge: the parent stands above its children. Re-exports are not
//!   followed: `super::PeerCert` counts as using the parent, even where a sibling defines it.

use proc_macro2::{Span, TokenStream, TokenTree};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use syn::visit::{self, Visit};

/// Longest function allowed, counted from the `fn` line to the closing brace, both included.
const MAX_FN_LINES: usize = 100;

/// Functions over [`MAX_FN_LINES`] tolerated while they are split (none today). Each entry
/// must still name a function that is too long, so this list can only shrink: remove an entry
/// once its function is split.
const LONG_FUNCTIONS_BEING_SPLIT: &[(&str, &str)] = &[];

/// Import cycles being broken, as (the module whose children they are, "" for the crate; the
/// modules in the cycle, sorted). Each entry must still be a cycle, exactly, so this list can
/// only shrink.
const CYCLES_BEING_BROKEN: &[(&str, &[&str])] = &[];

#[test]
fn no_import_cycles() {
    let krate = Crate::read(|path| std::fs::read_to_string(root().join(path)).ok());
    let cycles = krate.cycles();
    let findings = cycle_findings(&cycles, CYCLES_BEING_BROKEN);
    let modules = krate.modules.len();
    let summary = format!("{modules} modules, import cycles: {}", cycles.len());
    show(&findings.report, &summary);
    assert!(
        findings.problems.is_empty(),
        "\n{}\nBreak each cycle at one of its imports: move what both sides need to a module \
         below them.\n",
        findings.problems.join("\n")
    );
}

#[test]
fn no_long_functions() {
    let krate = Crate::read(|path| std::fs::read_to_string(root().join(path)).ok());
    let long = krate.long_functions();
    let findings = function_findings(&long, LONG_FUNCTIONS_BEING_SPLIT);
    let all = krate.functions.len();
    let summary = format!("{all} functions, over {MAX_FN_LINES} lines: {}", long.len());
    show(&findings.report, &summary);
    assert!(
        findings.problems.is_empty(),
        "\n{}\nSplit each into functions with one job each.\n",
        findings.problems.join("\n")
    );
}

/// What a check found: everything, allowed or not, and what fails it.
#[derive(Debug, Default)]
struct Findings {
    report: Vec<String>,
    problems: Vec<String>,
}

/// Every cycle not in `allowed`, and every entry of `allowed` that is no longer a cycle.
fn cycle_findings(cycles: &[Cycle], allowed: &[(&str, &[&str])]) -> Findings {
    let mut findings = Findings::default();
    for cycle in cycles {
        if allowed
            .iter()
            .any(|(scope, members)| cycle.is(scope, members))
        {
            findings
                .report
                .push(cycle.describe(" (allowed: being broken)"));
        } else {
            findings.report.push(cycle.describe(""));
            findings.problems.push(cycle.describe(""));
        }
    }
    for (scope, members) in allowed {
        if !cycles.iter().any(|c| c.is(scope, members)) {
            findings.problems.push(format!(
                "{} is no longer a cycle: remove it from CYCLES_BEING_BROKEN",
                Cycle::name(scope, members.iter().copied())
            ));
        }
    }
    findings
}

/// Every long function not in `allowed`, and every entry of `allowed` that no longer names a
/// long function.
fn function_findings(long: &[&Function], allowed: &[(&str, &str)]) -> Findings {
    let mut findings = Findings::default();
    for f in long {
        let line = format!(
            "{}:{} {} is {} lines (at most {MAX_FN_LINES})",
            f.file, f.line, f.name, f.lines
        );
        if allowed.contains(&(f.file.as_str(), f.name.as_str())) {
            findings
                .report
                .push(format!("{line} (allowed: being split)"));
        } else {
            findings.report.push(line.clone());
            findings.problems.push(line);
        }
    }
    for (file, name) in allowed {
        if !long.iter().any(|f| f.file == *file && f.name == *name) {
            findings.problems.push(format!(
                "{file} {name} is gone or no longer than {MAX_FN_LINES} lines: \
                 remove it from LONG_FUNCTIONS_BEING_SPLIT"
            ));
        }
    }
    findings
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Written past the test harness's capture, so that every run shows what was found.
fn show(report: &[String], summary: &str) {
    use std::io::Write;
    let text: String = report
        .iter()
        .flat_map(|finding| finding.lines())
        .chain([summary])
        .map(|line| format!("shape: {line}\n"))
        .collect();
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// What the shape checks need of the crate's sources.
#[derive(Debug, Default)]
struct Crate {
    /// Every module, as its path from the crate root (`["config", "load"]`).
    modules: BTreeSet<Vec<String>>,
    imports: Vec<Import>,
    functions: Vec<Function>,
}

/// A path from one module into another part of the crate.
#[derive(Debug)]
struct Import {
    from: Vec<String>,
    to: Vec<String>,
    file: String,
    /// The line of the segment that names the other module.
    line: usize,
}

#[derive(Debug)]
struct Function {
    file: String,
    line: usize,
    /// `name`, or `Type::name` for a method and `Trait::name` for a trait's provided method.
    name: String,
    lines: usize,
}

/// A file still to read: where it is, which module it is, where its submodules' files are.
struct Pending {
    file: String,
    module: Vec<String>,
    dir: String,
    /// Whether its imports count (not for the binary's `main.rs`: its `crate` is another one).
    imports: bool,
}

impl Crate {
    /// Reads the crate from its roots, with `read` giving a file's text by its path relative
    /// to the package (`src/lib.rs`).
    fn read(read: impl Fn(&str) -> Option<String>) -> Crate {
        let mut krate = Crate::default();
        let mut pending: Vec<Pending> = [("src/lib.rs", true), ("src/main.rs", false)]
            .into_iter()
            .map(|(file, imports)| Pending {
                file: file.to_string(),
                module: Vec::new(),
                dir: "src".to_string(),
                imports,
            })
            .collect();
        while let Some(next) = pending.pop() {
            let Some(text) = read(&next.file) else {
                if next.module.is_empty() {
                    continue; // a crate may have no binary, or no library
                }
                panic!(
                    "{}: cannot read the file of module {:?}",
                    next.file, next.module
                );
            };
            let parsed = syn::parse_file(&text).unwrap_or_else(|e| {
                let at = e.span().start();
                panic!("{}:{}:{}: {e}", next.file, at.line, at.column + 1)
            });
            let mut reader = Reader {
                krate: &mut krate,
                file: next.file.clone(),
                module: next.module.clone(),
                dir: next.dir.clone(),
                imports: next.imports,
                owner: None,
                children: Vec::new(),
            };
            reader.visit_file(&parsed);
            for (module, dir) in reader.children {
                pending.push(Pending {
                    file: module_file(&dir, &module, &read),
                    dir: format!("{dir}/{}", module.last().map_or("", String::as_str)),
                    module,
                    imports: next.imports,
                });
            }
        }
        krate
    }

    fn long_functions(&self) -> Vec<&Function> {
        let mut long: Vec<_> = self
            .functions
            .iter()
            .filter(|f| f.lines > MAX_FN_LINES)
            .collect();
        long.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        long
    }

    /// The edges of every graph checked, by the module whose children they join: from the
    /// importing child to the imported one, with the first import seen for it.
    fn edges(&self) -> BTreeMap<Vec<String>, Edges> {
        let mut edges: BTreeMap<_, Edges> = BTreeMap::new();
        for import in &self.imports {
            let common = import
                .from
                .iter()
                .zip(&import.to)
                .take_while(|(a, b)| a == b)
                .count();
            let (Some(from), Some(to)) = (import.from.get(common), import.to.get(common)) else {
                continue; // a module using itself, one of its ancestors or its descendants
            };
            let scope = import.from[..common].to_vec();
            let mut target = scope.clone();
            target.push(to.clone());
            if !self.modules.contains(&target) {
                continue; // an item of the common parent, not a sibling module
            }
            let at = (import.file.clone(), import.line);
            let key = (from.clone(), to.clone());
            let first = edges.entry(scope).or_default().entry(key);
            let first = first.or_insert_with(|| at.clone());
            if at < *first {
                *first = at;
            }
        }
        edges
    }

    /// Every strongly connected set of two or more modules, in every graph.
    fn cycles(&self) -> Vec<Cycle> {
        let mut cycles = Vec::new();
        for (scope, edges) in self.edges() {
            let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (from, to) in edges.keys() {
                next.entry(from).or_default().insert(to);
            }
            let reach: BTreeMap<&str, BTreeSet<&str>> =
                next.keys().map(|m| (*m, reachable(&next, m))).collect();
            let mut seen = BTreeSet::new();
            for (module, from_here) in &reach {
                if seen.contains(module) || !from_here.contains(module) {
                    continue;
                }
                let members: BTreeSet<&str> = from_here
                    .iter()
                    .filter(|other| reach.get(*other).is_some_and(|r| r.contains(module)))
                    .copied()
                    .collect();
                seen.extend(members.iter().copied());
                let inside = edges
                    .iter()
                    .filter(|((a, b), _)| {
                        members.contains(a.as_str()) && members.contains(b.as_str())
                    })
                    .map(|((a, b), (file, line))| (a.clone(), b.clone(), file.clone(), *line))
                    .collect();
                cycles.push(Cycle {
                    scope: scope.join("::"),
                    members: members.iter().map(|m| m.to_string()).collect(),
                    edges: inside,
                });
            }
        }
        cycles
    }
}

/// The edges of one graph: (importing module, imported module) to the first file and line
/// doing it.
type Edges = BTreeMap<(String, String), (String, usize)>;

/// The modules reachable from `start` by one or more edges.
fn reachable<'a>(next: &BTreeMap<&'a str, BTreeSet<&'a str>>, start: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(m) = stack.pop() {
        for n in next.get(m).into_iter().flatten() {
            if seen.insert(*n) {
                stack.push(n);
            }
        }
    }
    seen
}

/// The file of module `module` declared with `mod name;` in a file whose submodules live in
/// `dir`: `dir/name.rs` or `dir/name/mod.rs`.
fn module_file(dir: &str, module: &[String], read: &impl Fn(&str) -> Option<String>) -> String {
    let name = module.last().map_or("", String::as_str);
    let flat = format!("{dir}/{name}.rs");
    let nested = format!("{dir}/{name}/mod.rs");
    if read(&flat).is_some() || read(&nested).is_none() {
        flat
    } else {
        nested
    }
}

/// Modules that import each other, directly or through others.
#[derive(Debug)]
struct Cycle {
    /// The module whose children these are, `""` for the crate's top level.
    scope: String,
    members: Vec<String>,
    /// Every import between two members: from, to, and the first file and line doing it.
    edges: Vec<(String, String, String, usize)>,
}

impl Cycle {
    fn is(&self, scope: &str, members: &[&str]) -> bool {
        self.scope == scope && self.members.iter().eq(members.iter())
    }

    fn name<'a>(scope: &str, members: impl Iterator<Item = &'a str>) -> String {
        let members: Vec<&str> = members.collect();
        let level = if scope.is_empty() {
            "top-level modules".to_string()
        } else {
            format!("the submodules of {scope}")
        };
        format!("import cycle among {level}: {}", members.join(" <-> "))
    }

    /// The cycle, `note`, and one import per edge.
    fn describe(&self, note: &str) -> String {
        let mut text = Cycle::name(&self.scope, self.members.iter().map(String::as_str));
        text.push_str(note);
        for (from, to, file, line) in &self.edges {
            let _ = write!(text, "\n    {from} -> {to}: {file}:{line}");
        }
        text
    }
}

/// Reads one file: its modules, imports and functions, skipping `#[cfg(test)]` items.
struct Reader<'a> {
    krate: &'a mut Crate,
    file: String,
    module: Vec<String>,
    /// Where the files of this module's submodules are.
    dir: String,
    imports: bool,
    /// The type or trait whose items are being read.
    owner: Option<String>,
    /// Modules declared here with `mod name;`, and the directory their files are in.
    children: Vec<(Vec<String>, String)>,
}

impl Reader<'_> {
    fn function(&mut self, name: &syn::Ident, sig: &syn::Signature, body: &syn::Block) {
        let first = sig.fn_token.span.start().line;
        let last = body.brace_token.span.close().end().line;
        let name = match &self.owner {
            Some(owner) => format!("{owner}::{name}"),
            None => name.to_string(),
        };
        self.krate.functions.push(Function {
            file: self.file.clone(),
            line: first,
            name,
            lines: last + 1 - first,
        });
    }

    /// Records a path given as its segments, if it starts at the crate, this module or one
    /// of its ancestors.
    fn import(&mut self, segments: &[(String, Span)]) {
        if !self.imports {
            return;
        }
        let mut to = Vec::new();
        let mut lines = Vec::new();
        for (i, (segment, span)) in segments.iter().enumerate() {
            let leading = lines.is_empty();
            match segment.as_str() {
                "crate" if i == 0 => {}
                "self" if i == 0 => to.clone_from(&self.module),
                "super" if leading => {
                    if i == 0 {
                        to.clone_from(&self.module);
                    }
                    if to.pop().is_none() {
                        return; // above the crate root: not a path into this crate
                    }
                }
                _ if i == 0 => return, // another crate, a local name, a child module
                _ => {
                    to.push(segment.clone());
                    lines.push((to.len() - 1, span.start().line));
                }
            }
        }
        let common = self
            .module
            .iter()
            .zip(&to)
            .take_while(|(a, b)| a == b)
            .count();
        let Some(&(_, line)) = lines.iter().find(|(at, _)| *at >= common) else {
            return; // this module or one of its ancestors
        };
        self.krate.imports.push(Import {
            from: self.module.clone(),
            to,
            file: self.file.clone(),
            line,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<(String, Span)>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push((p.ident.to_string(), p.ident.span()));
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.use_leaf(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.import(prefix),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &mut Vec<(String, Span)>, ident: &syn::Ident) {
        // `use crate::config::{self, Snapshot}`: `self` is the prefix itself.
        if ident == "self" && !prefix.is_empty() {
            return self.import(prefix);
        }
        prefix.push((ident.to_string(), ident.span()));
        self.import(prefix);
        prefix.pop();
    }
}

impl<'ast> Visit<'ast> for Reader<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs[..],
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_test(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast syn::TraitItem) {
        let attrs = match item {
            syn::TraitItem::Const(i) => &i.attrs[..],
            syn::TraitItem::Fn(i) => &i.attrs,
            syn::TraitItem::Type(i) => &i.attrs,
            syn::TraitItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_test(attrs) {
            visit::visit_trait_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let mut module = self.module.clone();
        module.push(item.ident.to_string());
        if self.imports {
            self.krate.modules.insert(module.clone());
        }
        let Some((_, items)) = &item.content else {
            self.children.push((module, self.dir.clone()));
            return;
        };
        let outer = std::mem::replace(&mut self.module, module);
        let dir = format!("{}/{}", self.dir, item.ident);
        let outer_dir = std::mem::replace(&mut self.dir, dir);
        for item in items {
            self.visit_item(item);
        }
        self.module = outer;
        self.dir = outer_dir;
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let owner = match &*item.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let outer = std::mem::replace(&mut self.owner, owner);
        visit::visit_item_impl(self, item);
        self.owner = outer;
    }

    fn visit_item_trait(&mut self, item: &'ast syn::ItemTrait) {
        let outer = self.owner.replace(item.ident.to_string());
        visit::visit_item_trait(self, item);
        self.owner = outer;
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        let outer = self.owner.take();
        self.function(&item.sig.ident, &item.sig, &item.block);
        visit::visit_item_fn(self, item);
        self.owner = outer;
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.function(&item.sig.ident, &item.sig, &item.block);
        visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(body) = &item.default {
            self.function(&item.sig.ident, &item.sig, body);
        }
        visit::visit_trait_item_fn(self, item);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<_> = path
                .segments
                .iter()
                .map(|s| (s.ident.to_string(), s.ident.span()))
                .collect();
            self.import(&segments);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        for path in macro_paths(mac.tokens.clone()) {
            self.import(&path);
        }
        visit::visit_macro(self, mac);
    }
}

/// Paths starting with `crate::` or `super::` among a macro's arguments, which syn leaves as
/// tokens (`tracing::info!(x = crate::a::f())`).
fn macro_paths(tokens: TokenStream) -> Vec<Vec<(String, Span)>> {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let punct = |back: usize| match i.checked_sub(back).map(|at| &tokens[at]) {
            Some(TokenTree::Punct(p)) => Some(p.as_char()),
            _ => None,
        };
        let starts = match &tokens[i] {
            TokenTree::Group(g) => {
                paths.extend(macro_paths(g.stream()));
                false
            }
            // Not `$crate` (a macro's own crate), not the middle of `a::super`.
            TokenTree::Ident(_) if punct(1) == Some('$') => false,
            TokenTree::Ident(_) if punct(1) == Some(':') && punct(2) == Some(':') => false,
            TokenTree::Ident(id) => id == "crate" || id == "super",
            _ => false,
        };
        if !starts {
            i += 1;
            continue;
        }
        let mut path = Vec::new();
        if let TokenTree::Ident(id) = &tokens[i] {
            path.push((id.to_string(), id.span()));
        }
        while let (
            Some(TokenTree::Punct(a)),
            Some(TokenTree::Punct(b)),
            Some(TokenTree::Ident(id)),
        ) = (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3))
        {
            if a.as_char() != ':' || b.as_char() != ':' {
                break;
            }
            path.push((id.to_string(), id.span()));
            i += 3;
        }
        paths.push(path);
        i += 1;
    }
    paths
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item;
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Whether the item is compiled only for tests: `#[cfg(test)]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| match &a.meta {
        syn::Meta::List(list) => list.path.is_ident("cfg") && list.tokens.to_string() == "test",
        _ => false,
    })
}

/// The checks themselves, on small crates made up here.
mod checks {
    use super::*;

    fn read(files: &[(&str, &str)]) -> Crate {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        Crate::read(|path| files.get(path).cloned())
    }

    fn cycles(files: &[(&str, &str)]) -> Vec<String> {
        read(files)
            .cycles()
            .iter()
            .map(|c| c.describe(""))
            .collect()
    }

    #[test]
    fn top_level_cycles_through_grouped_uses_code_and_macros() {
        let found = cycles(&[
            (
                "src/lib.rs",
                "pub mod a;\npub mod b;\npub mod c;\npub mod d;",
            ),
            ("src/a.rs", "use crate::{d, b::Thing};"),
            ("src/b.rs", "fn f() {\n    crate::c::g();\n}"),
            (
                "src/c.rs",
                "fn g() {\n    tracing::info!(x = %crate::a::h());\n}",
            ),
            ("src/d/mod.rs", "pub mod e;"),
            ("src/d/e.rs", "use crate::a as _;"),
        ]);
        assert_eq!(
            found,
            [
                "import cycle among top-level modules: a <-> b <-> c <-> d\n    \
                 a -> b: src/a.rs:1\n    a -> d: src/a.rs:1\n    b -> c: src/b.rs:2\n    \
                 c -> a: src/c.rs:2\n    d -> a: src/d/e.rs:1"
            ]
        );
    }

    #[test]
    fn siblings_may_not_import_each_other_in_a_circle_but_may_use_their_parent() {
        let found = cycles(&[
            ("src/lib.rs", "pub mod config;"),
            (
                "src/config.rs",
                "pub mod a;\npub mod b;\npub struct Snapshot;",
            ),
            (
                "src/config/a.rs",
                "use super::{Snapshot, b::B};\npub struct A;",
            ),
            (
                "src/config/b.rs",
                "pub struct B;\nfn f() -> super::a::A {\n    todo!()\n}",
            ),
        ]);
        assert_eq!(
            found,
            ["import cycle among the submodules of config: a <-> b\n    \
                 a -> b: src/config/a.rs:1\n    b -> a: src/config/b.rs:2"]
        );
        let fine = cycles(&[
            ("src/lib.rs", "pub mod config;"),
            ("src/config/mod.rs", "pub mod a;\nuse a::A;\npub struct S;"),
            (
                "src/config/a.rs",
                "use super::S;\nuse crate::config::S as T;",
            ),
        ]);
        assert!(fine.is_empty(), "{fine:?}");
    }

    #[test]
    fn test_code_and_the_roots_are_not_read_for_imports() {
        let found = cycles(&[
            ("src/lib.rs", "pub mod a;\npub mod b;\nuse crate::a::X;"),
            ("src/main.rs", "mod m;\nuse crate::m::Y;"),
            ("src/m.rs", "use crate::a::X;"),
            ("src/a.rs", "use crate::b::Y;\n#[cfg(test)]\nmod tests;"),
            (
                "src/b.rs",
                "#[cfg(test)]\nmod tests {\n    use crate::a::X;\n}\n#[cfg(test)]\nuse crate::a::Z;",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn allow_lists_only_shrink() {
        let cycle = Cycle {
            scope: String::new(),
            members: vec!["a".into(), "b".into()],
            edges: Vec::new(),
        };
        let allowed: &[(&str, &[&str])] = &[("", &["a", "b"])];
        assert!(
            cycle_findings(std::slice::from_ref(&cycle), allowed)
                .problems
                .is_empty()
        );
        assert_eq!(
            cycle_findings(std::slice::from_ref(&cycle), &[])
                .problems
                .len(),
            1
        );
        assert_eq!(
            cycle_findings(&[], allowed).problems.len(),
            1,
            "a stale entry fails"
        );

        let f = Function {
            file: "src/a.rs".into(),
            line: 3,
            name: "S::long".into(),
            lines: 120,
        };
        let allowed = &[("src/a.rs", "S::long")];
        assert!(function_findings(&[&f], allowed).problems.is_empty());
        assert_eq!(
            function_findings(&[&f], &[]).problems,
            ["src/a.rs:3 S::long is 120 lines (at most 100)"]
        );
        assert_eq!(
            function_findings(&[], allowed).problems.len(),
            1,
            "a stale entry fails"
        );
    }

    #[test]
    fn functions_are_measured_from_fn_to_closing_brace_outside_tests() {
        let body = |name: &str, lines: usize| {
            format!(
                "fn {name}() {{\n{}}}\n",
                "    let _ = 1;\n".repeat(lines - 2)
            )
        };
        let lib = format!(
            "pub mod a;\n{}impl S {{\n    {}}}\ntrait T {{\n    {}}}\n#[cfg(test)]\nmod tests {{\n{}}}\n",
            body("free", 101),
            body("method", 102),
            body("provided", 100),
            body("in_test", 200),
        );
        let krate = read(&[("src/lib.rs", &lib), ("src/a.rs", &body("short", 3))]);
        let measured: Vec<_> = krate
            .functions
            .iter()
            .map(|f| (f.file.as_str(), f.line, f.name.as_str(), f.lines))
            .collect();
        assert_eq!(
            measured,
            [
                ("src/lib.rs", 2, "free", 101),
                ("src/lib.rs", 104, "S::method", 102),
                ("src/lib.rs", 208, "T::provided", 100),
                ("src/a.rs", 1, "short", 3),
            ]
        );
        let long: Vec<_> = krate
            .long_functions()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(long, ["free", "S::method"]);
    }
}
