//! The `modelgate` command line: `modelgate check [options] FILE...` (docs/check.md).

use std::process::ExitCode;

use modelgate_check::{Filter, Report};

const USAGE: &str = "usage: modelgate check [--filter NAME] [--set KEY=VALUE]... FILE...

Validates every modelgate filter configuration in the files, with the filters' own code:
  - a JSON file: the configuration of the filter named by --filter
    (readiness_gate, model_router, load_shedder, ml_metrics);
  - YAML: Envoy bootstraps (every Wasm filter with a modelgate root_id), Istio WasmPlugins
    (spec.pluginConfig) and EnvoyFilters; several documents per file.
Then cross-checks the filters of each proxy: router targets have routes, ml_metrics lists
the router's names, `scrape` blocks are identical. Files checked together are one mesh.
--set KEY=VALUE replaces {{KEY}} in the shipped templates (envoy/*.yaml) first.
Prints one line per error (file, document, object, filter, path, field); exit 1 on any.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(usage) => {
            eprintln!("modelgate: {usage}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Ok(true): all valid; Ok(false): errors printed; Err: bad command line or unreadable file.
fn run(args: &[String]) -> Result<bool, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("check") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(true);
        }
        Some(other) => return Err(format!("unknown command `{other}`")),
        None => return Err("no command".to_string()),
    }
    let mut filter = None;
    let mut vars = Vec::new();
    let mut files = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => {
                let name = it.next().ok_or("--filter needs a filter name")?;
                filter = Some(
                    Filter::from_name(name).ok_or_else(|| format!("unknown filter `{name}`"))?,
                );
            }
            "--set" => {
                let kv = it.next().ok_or("--set needs KEY=VALUE")?;
                let (k, v) = kv.split_once('=').ok_or("--set needs KEY=VALUE")?;
                vars.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            f if f.starts_with("--") => return Err(format!("unknown option `{f}`")),
            f => files.push(f.to_string()),
        }
    }
    if files.is_empty() {
        return Err("no files".to_string());
    }
    let mut report = Report::default();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let json = f.ends_with(".json");
        if json && filter.is_none() {
            return Err(format!("{f}: a JSON file needs --filter NAME"));
        }
        report.check_text(f, &text, if json { filter } else { None }, &vars);
    }
    report.finish();
    for p in &report.problems {
        println!("{p}");
    }
    if report.problems.is_empty() {
        println!(
            "modelgate check: {} filter configurations in {} files: ok",
            report.checked,
            files.len()
        );
        Ok(true)
    } else {
        println!(
            "modelgate check: {} errors in {} filter configurations",
            report.problems.len(),
            report.checked
        );
        Ok(false)
    }
}
