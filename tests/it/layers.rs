//! The layers of DESIGN.md §8, checked from the source: what each floor may import. A rule
//! broken here is a change to the architecture, to be made in DESIGN.md first.

use std::path::{Path, PathBuf};

/// The crate's top-level modules a file refers to (`crate::x`), comments left out.
fn imports(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

/// External crates a file uses (`use x::` or `x::` at a path's start), comments left out.
fn uses_crate(source: &str, krate: &str) -> bool {
    source.lines().map(|l| l.split("//").next().unwrap_or("")).any(|code| {
        code.contains(&format!("use {krate}::"))
            || code.contains(&format!(" {krate}::"))
            || code.contains(&format!("({krate}::"))
            || code.contains(&format!("<{krate}::"))
    })
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every breach of `forbidden` (top-level modules) and `http` (HTTP crates) under `dir`.
fn breaches(dir: &str, forbidden: &[&str], http: bool) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for file in rust_files(&src.join(dir)) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&src).unwrap().display().to_string();
        for m in imports(&text) {
            if forbidden.contains(&m.as_str()) {
                out.push(format!("{name} imports crate::{m}"));
            }
        }
        for krate in ["axum", "hyper", "http_body_util", "tower"] {
            if http && uses_crate(&text, krate) {
                out.push(format!("{name} uses {krate} (HTTP belongs to api/)"));
            }
        }
    }
    out
}

#[test]
fn the_checker_sees_an_import_and_ignores_a_comment() {
    let source = "//! mentions crate::api in a comment\nuse crate::kernel::store::Store;\nlet x = crate::api::dto::Run::default(); // crate::cli\n";
    assert_eq!(imports(source), vec!["kernel".to_owned(), "api".to_owned()]);
    assert!(uses_crate("use axum::Json;", "axum"));
    assert!(!uses_crate("// axum::Json", "axum"));
}

#[test]
fn the_kernel_imports_nothing_above_it() {
    let above = ["machine", "domain", "app", "api", "cli", "exec", "serve", "telemetry", "export", "audit", "client"];
    assert_eq!(breaches("kernel", &above, true), Vec::<String>::new());
}

#[test]
fn domains_import_the_kernel_and_each_other_only() {
    let above = ["machine", "app", "api", "cli", "exec", "serve", "telemetry", "export", "audit", "client"];
    assert_eq!(breaches("domain", &above, true), Vec::<String>::new());
}

#[test]
fn the_machine_and_the_use_cases_know_no_http_and_no_terminal() {
    assert_eq!(breaches("machine", &["app", "api", "cli", "exec", "serve", "client"], true), Vec::<String>::new());
    assert_eq!(breaches("app", &["api", "cli", "serve", "client"], true), Vec::<String>::new());
    assert_eq!(breaches("audit", &["api", "cli", "serve"], true), Vec::<String>::new());
    assert_eq!(breaches("export", &["api", "cli", "serve"], true), Vec::<String>::new());
}

#[test]
fn no_handler_imports_another_and_the_daemon_calls_none() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in rust_files(&src.join("api/handlers")) {
        let own = file.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().map(|l| l.split("//").next().unwrap_or("")) {
            if let Some(i) = line.find("api::handlers::") {
                let name: String = line[i + "api::handlers::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let is_module = std::path::Path::new(&src.join("api/handlers").join(format!("{name}.rs"))).exists();
                if is_module && name != own {
                    found.push(format!("{}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    let serve = std::fs::read_to_string(src.join("serve.rs")).unwrap();
    found.extend(
        serve.lines().filter(|l| l.split("//").next().unwrap_or("").contains("api::handlers")).map(str::to_owned),
    );
    assert_eq!(found, Vec::<String>::new());
}
