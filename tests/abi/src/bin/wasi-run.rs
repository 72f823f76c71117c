//! Runs a wasm32-wasip1 command (a `cargo test` binary of modelgate-core) on wasmtime, as
//! `CARGO_TARGET_WASM32_WASIP1_RUNNER`. The sandbox has no preopened directories and no
//! environment (except libtest's `RUST_TEST_*`), so a core test that needs the filesystem or
//! env fails here as it would in a proxy VM; threads do not exist on wasm32-wasip1 at all.

use std::process::ExitCode;

use anyhow::{Context, Result};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

fn run() -> Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(wasm) = args.first() else {
        anyhow::bail!("usage: wasi-run <module.wasm> [args...]");
    };
    let engine = Engine::default();
    let module = Module::from_file(&engine, wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("loading {wasm}"))?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |ctx| ctx)?;
    let mut builder = WasiCtxBuilder::new();
    builder.inherit_stdio().args(&args);
    // Only libtest's own settings pass through (e.g. RUST_TEST_NOCAPTURE, so the panic
    // message of a failing test is printed before the abort ends the binary).
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("RUST_TEST_")) {
        builder.env(&k, &v);
    }
    let wasi = builder.build_p1();
    let mut store = Store::new(&engine, wasi);
    let instance = linker.instantiate(&mut store, &module)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => {
                // A failing test aborts (wasm32 has no unwinding): libtest already printed
                // the test's name and its panic message; add the trap and wasm frames only.
                let frames = e
                    .downcast_ref::<wasmtime::WasmBacktrace>()
                    .map(|bt| format!("\n{bt}"))
                    .unwrap_or_default();
                eprintln!("wasi-run: {wasm} trapped: {}{frames}", e.root_cause());
                Ok(101)
            }
        },
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("wasi-run: {e:?}");
            ExitCode::from(101)
        }
    }
}
