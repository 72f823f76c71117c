//! proxy-wasm host on wasmtime (see issue 3).
