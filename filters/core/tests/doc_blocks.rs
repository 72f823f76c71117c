//! Every ```json and ```yaml block in README.md and docs/*.md parses (issue 14.1: a README
//! JSON block once held a YAML comment cut mid-word). Reads files, so not on wasm32.
#![cfg(not(target_arch = "wasm32"))]
// A test: a missing file or a broken block is a failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (file, first line number, language, text) of every fenced block tagged json or yaml.
fn blocks() -> Vec<(String, usize, String, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable markdown");
        let name = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        let mut open: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let fence = line.trim_start().strip_prefix("```");
            match (&mut open, fence) {
                (None, Some(lang)) => open = Some((i + 1, lang.trim().to_string(), String::new())),
                (Some(_), Some(_)) => {
                    let (start, lang, body) = open.take().unwrap();
                    if lang == "json" || lang == "yaml" {
                        out.push((name.clone(), start, lang, body));
                    }
                }
                (Some((_, _, body)), None) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, None) => {}
            }
        }
        assert!(open.is_none(), "{name}: unclosed code block");
    }
    out
}

#[test]
fn every_json_and_yaml_block_in_the_docs_parses() {
    let all = blocks();
    assert!(
        all.iter().filter(|b| b.2 == "json").count() >= 5,
        "expected the docs' JSON examples"
    );
    let mut bad = Vec::new();
    for (file, line, lang, body) in &all {
        let err = if lang == "json" {
            serde_json::from_str::<serde_json::Value>(body)
                .err()
                .map(|e| e.to_string())
        } else {
            serde_yaml::Deserializer::from_str(body)
                .map(<serde_yaml::Value as serde::Deserialize>::deserialize)
                .find_map(Result::err)
                .map(|e| e.to_string())
        };
        if let Some(e) = err {
            bad.push(format!("{file}:{line} ({lang}): {e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "blocks that do not parse:\n{}",
        bad.join("\n")
    );
}
