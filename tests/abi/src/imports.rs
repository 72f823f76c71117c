//! The host functions, exactly the set Envoy 1.40 (proxy-wasm-cpp-host) registers for a
//! module declaring ABI 0.2.1, with Envoy's status codes and edge cases. A module importing
//! anything else fails to instantiate here, as it fails to load in Envoy.

use wasmtime::{bail, format_err as anyhow, Result};
use wasmtime::{Caller, ExternType, Linker, Memory, Module};

use crate::http::LocalReply;
use crate::vm::{header_value, HttpCall, LogLevel, Phase, State};
use crate::wire::{self, Pairs};

/// `env` functions for ABI 0.2.1: cpp-host's `FOR_ALL_HOST_FUNCTIONS` plus the 0.2.1-specific
/// `continue_stream`, `close_stream`, `get_log_level`, plus two emscripten helpers.
pub const ENVOY_ENV_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_status",
    "proxy_set_property",
    "proxy_get_property",
    "proxy_send_local_response",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_close",
    "proxy_grpc_cancel",
    "proxy_grpc_send",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_get_log_level",
    "pthread_equal",
    "emscripten_notify_memory_growth",
];

/// The `env` imports a test can make the host refuse at run time ([`crate::Vm::refuse`]):
/// those that Envoy may answer with an error status and the filters call.
pub const REFUSABLE: &[&str] = &[
    "proxy_get_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_send_local_response",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_http_call",
    "proxy_get_property",
    "proxy_set_tick_period_milliseconds",
    "proxy_set_effective_context",
    "proxy_continue_stream",
];

/// cpp-host's `FOR_ALL_WASI_FUNCTIONS`, registered under both `wasi_snapshot_preview1` and
/// `wasi_unstable`. Notably absent: `poll_oneoff`, `sched_yield`, `fd_filestat_get`,
/// `path_*` except `path_open`, `sock_*`, `thread-spawn`.
pub const ENVOY_WASI_FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

/// Exports Envoy reads the ABI version from (`BytecodeUtil::getAbiVersion`).
pub const ABI_VERSION_EXPORTS: &[&str] = &[
    "proxy_abi_version_0_2_1",
    "proxy_abi_version_0_2_0",
    "proxy_abi_version_0_1_0",
];

/// What `check_module` found wrong with a module, if anything.
pub fn envoy_load_problems(module: &Module) -> Vec<String> {
    let mut problems = Vec::new();
    for imp in module.imports() {
        let (m, n) = (imp.module(), imp.name());
        let known = match m {
            "env" => ENVOY_ENV_FUNCTIONS.contains(&n),
            "wasi_snapshot_preview1" | "wasi_unstable" => ENVOY_WASI_FUNCTIONS.contains(&n),
            _ => false,
        };
        if !known {
            problems.push(format!(
                "imports `{m}.{n}`, which Envoy 1.40 does not provide"
            ));
        } else if !matches!(imp.ty(), ExternType::Func(_)) {
            problems.push(format!("imports `{m}.{n}` as a non-function"));
        }
    }
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    let abi: Vec<&&str> = ABI_VERSION_EXPORTS
        .iter()
        .filter(|v| exports.contains(v))
        .collect();
    match abi.as_slice() {
        [] => problems.push("exports no proxy_abi_version_* marker (Envoy: \"Missing or unknown Proxy-Wasm ABI version\")".into()),
        [v] if **v != "proxy_abi_version_0_2_1" => {
            problems.push(format!("declares {v}; modelgate modules must use ABI 0.2.1"))
        }
        [_] => {}
        _ => problems.push("exports more than one ABI version marker".into()),
    }
    if !exports.contains(&"malloc") && !exports.contains(&"proxy_on_memory_allocate") {
        problems.push("exports neither malloc nor proxy_on_memory_allocate".into());
    }
    if !exports.contains(&"memory") {
        problems.push("exports no memory".into());
    }
    if !exports.contains(&"_initialize") && !exports.contains(&"_start") {
        problems.push("exports neither _initialize (WASI reactor) nor _start".into());
    }
    problems
}

// Envoy's WasmResult codes.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const INVALID_MEMORY_ACCESS: i32 = 6;
const EMPTY: i32 = 7;
const CAS_MISMATCH: i32 = 8;
const INTERNAL_FAILURE: i32 = 10;

// WASI errno values Envoy returns.
const WASI_EBADF: i32 = 8;
const WASI_ENOSYS: i32 = 52;
const WASI_ENOTSUP: i32 = 58;
const WASI_EFAULT: i32 = 21;

type C<'a> = Caller<'a, State>;

fn memory(c: &mut C) -> Option<Memory> {
    // A refusable import's real function is called from the host, not from the module:
    // its caller has no exports, so the memory comes from the state then.
    match c.get_export("memory") {
        Some(e) => e.into_memory(),
        None => c.data().memory,
    }
}

fn read(c: &mut C, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(c)?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&*c).get(p..p.checked_add(l)?).map(<[u8]>::to_vec)
}

fn read_str(c: &mut C, ptr: i32, len: i32) -> Option<String> {
    read(c, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = memory(c) else { return false };
    let p = ptr as u32 as usize;
    match mem.data_mut(&mut *c).get_mut(p..p + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn write_u32(c: &mut C, ptr: i32, v: u32) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C, ptr: i32, v: u64) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

/// cpp-host `copyToPointerSize`: allocates with the module's malloc (nothing for an empty
/// value, whose pointer is 0), copies, writes pointer and size.
fn copy_out(c: &mut C, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<i32> {
    let mut addr = 0;
    if !bytes.is_empty() {
        let malloc = c
            .data()
            .malloc
            .clone()
            .ok_or_else(|| anyhow!("module has no malloc"))?;
        c.data_mut().counts.allocations += 1;
        addr = malloc.call(&mut *c, bytes.len() as i32)?;
        if addr == 0 || !write(c, addr, bytes) {
            return Ok(INVALID_MEMORY_ACCESS);
        }
    }
    if write_u32(c, ptr_ptr, addr as u32) && write_u32(c, size_ptr, bytes.len() as u32) {
        Ok(OK)
    } else {
        Ok(INVALID_MEMORY_ACCESS)
    }
}

/// Envoy restricts host calls while `_initialize` runs; remember the first violation.
fn restricted(c: &mut C, name: &str) -> bool {
    if c.data().phase == Phase::Initialize {
        let st = c.data_mut();
        if st.restricted_violation.is_none() {
            st.restricted_violation = Some(name.to_string());
        }
        return true;
    }
    false
}

/// Header map for reading (`getConstMap`): `None` when Envoy has no such map right now.
fn const_map(st: &State, map_type: i32) -> Option<&Pairs> {
    if map_type == 6 || map_type == 7 {
        let r = st.call_response.as_ref()?;
        return Some(if map_type == 6 {
            &r.headers
        } else {
            &r.trailers
        });
    }
    let s = st.streams.get(&st.ctx())?;
    let log = s.access_log_phase;
    match map_type {
        0 if s.req.headers_live || (log && s.req.headers_seen) => Some(&s.req.headers),
        1 if s.req.trailers_live && !log => Some(&s.req.trailers),
        2 if s.resp.headers_live || (log && s.resp.headers_seen) => Some(&s.resp.headers),
        3 if s.resp.trailers_live || (log && s.resp.trailers_seen) => Some(&s.resp.trailers),
        _ => None,
    }
}

/// Header map for writing (`getMap`): only maps of the live stream, never in on_log.
fn mut_map(st: &mut State, map_type: i32) -> Option<&mut Pairs> {
    let ctx = st.ctx();
    let s = st.streams.get_mut(&ctx)?;
    if s.access_log_phase {
        return None;
    }
    match map_type {
        0 if s.req.headers_live => Some(&mut s.req.headers),
        1 if s.req.trailers_live => Some(&mut s.req.trailers),
        2 if s.resp.headers_live => Some(&mut s.resp.headers),
        3 if s.resp.trailers_live => Some(&mut s.resp.trailers),
        _ => None,
    }
}

fn map_touched(st: &mut State, map_type: i32) {
    let ctx = st.ctx();
    if let Some(s) = st.streams.get_mut(&ctx) {
        if map_type == 0 {
            // ABI 0.2.1: Envoy clears the route cache when request headers change.
            s.route_cache_cleared = true;
        }
    }
}

/// Buffer for reading; `Err(code)` when Envoy answers with a status instead.
fn const_buffer(st: &State, buffer_type: i32) -> Result<&[u8], i32> {
    let stream = st.streams.get(&st.ctx());
    match buffer_type {
        0 => match stream {
            Some(s) if s.req.body_live => Ok(&s.req.body),
            _ => Err(NOT_FOUND),
        },
        1 => match stream {
            Some(s) if s.resp.body_live => Ok(&s.resp.body),
            _ => Err(NOT_FOUND),
        },
        4 => st
            .call_response
            .as_ref()
            .map(|r| r.body.as_slice())
            .ok_or(NOT_FOUND),
        6 => Ok(&st.vm_config),
        7 if matches!(st.phase, Phase::VmStart | Phase::Configure) => Ok(&st.plugin_config),
        8 => Ok(&[]),
        t if !(0..=8).contains(&t) => Err(BAD_ARGUMENT),
        _ => Err(NOT_FOUND),
    }
}

fn property(st: &State, key: &[u8]) -> Option<Vec<u8>> {
    if let Some(s) = st.streams.get(&st.ctx()) {
        if let Some(v) = s.properties.get(key) {
            return Some(v.clone());
        }
    }
    st.properties.get(key).cloned()
}

/// Registers every host function on `linker`.
pub fn define(linker: &mut Linker<State>) -> Result<()> {
    define_env(linker)?;
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        define_wasi(linker, module)?;
    }
    Ok(())
}

fn define_env(l: &mut Linker<State>) -> Result<()> {
    define_logging_and_clock(l)?;
    define_properties(l)?;
    define_local_response(l)?;
    define_shared_data(l)?;
    define_header_maps(l)?;
    define_buffers(l)?;
    define_http_calls(l)?;
    define_grpc(l)?;
    define_metrics(l)?;
    define_stream_control(l)?;
    define_emscripten(l)?;
    Ok(())
}

/// Logging, the clock, the tick timer and the status of the last call.
fn define_logging_and_clock(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C, level: i32, ptr: i32, len: i32| -> Result<i32> {
            let Some(level) = LogLevel::from_i32(level) else {
                return Ok(BAD_ARGUMENT);
            };
            let Some(msg) = read_str(&mut c, ptr, len) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            c.data_mut().log(level, msg);
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C, ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_log_level") {
                return Ok(INTERNAL_FAILURE);
            }
            let level = c.data().log_level as u32;
            Ok(if write_u32(&mut c, ptr, level) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_current_time_nanoseconds") {
                return Ok(INTERNAL_FAILURE);
            }
            let now = c.data().host.lock().now_ns;
            Ok(if write_u64(&mut c, ptr, now) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C, period: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_set_tick_period_milliseconds") {
                return Ok(INTERNAL_FAILURE);
            }
            c.data_mut().tick_period_ms = period as u32;
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_status") {
                return Ok(INTERNAL_FAILURE);
            }
            let (code, msg) = c.data().status.clone();
            if !write_u32(&mut c, code_ptr, code) {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            copy_out(&mut c, &msg, ptr_ptr, size_ptr)
        },
    )?;
    Ok(())
}

/// Properties (`get_property` / `set_property`).
fn define_properties(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C, path_ptr: i32, path_len: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_property") {
                return Ok(INTERNAL_FAILURE);
            }
            let Some(path) = read(&mut c, path_ptr, path_len) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            match property(c.data(), &path) {
                Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C, kp: i32, kl: i32, vp: i32, vl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_set_property") {
                return Ok(INTERNAL_FAILURE);
            }
            let (Some(k), Some(v)) = (read(&mut c, kp, kl), read(&mut c, vp, vl)) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let st = c.data_mut();
            let ctx = st.ctx();
            // Envoy stores it in the stream's filter state; a root context has none.
            match st.streams.get_mut(&ctx) {
                Some(s) => {
                    s.properties.insert(k, v);
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    Ok(())
}

/// Local replies, sent after the callback returns as Envoy does.
fn define_local_response(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> Result<i32> {
            if restricted(&mut c, "proxy_send_local_response") {
                return Ok(INTERNAL_FAILURE);
            }
            let (Some(details), Some(body), Some(headers)) = (
                read_str(&mut c, dp, dl),
                read(&mut c, bp, bl),
                read(&mut c, hp, hl),
            ) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let st = c.data_mut();
            let ctx = st.ctx();
            st.stop_next_iteration = true;
            if let Some(s) = st.streams.get_mut(&ctx) {
                let reply = LocalReply {
                    status: status as u32,
                    headers: wire::decode_pairs(&headers),
                    body,
                    details,
                    grpc_status: grpc,
                };
                s.local_reply_calls += 1;
                // Envoy sends the reply after the VM call returns; a second one in the same
                // stream is ignored by its filter manager.
                if s.pending_local_reply.is_none() && s.local_reply.is_none() {
                    s.pending_local_reply = Some(reply);
                }
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

/// Shared data (key/value with CAS) and shared queues, across VMs of one proxy.
fn define_shared_data(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_shared_data") {
                return Ok(INTERNAL_FAILURE);
            }
            let Some(key) = read_str(&mut c, kp, kl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let got = {
                let st = c.data();
                st.host.lock().get_data(&st.vm_id, &key)
            };
            let Some((value, cas)) = got else {
                return Ok(NOT_FOUND);
            };
            let r = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            if r != OK {
                return Ok(r);
            }
            Ok(if write_u32(&mut c, cas_ptr, cas) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_set_shared_data") {
                return Ok(INTERNAL_FAILURE);
            }
            let (Some(key), Some(value)) = (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let st = c.data();
            let ok = st.host.lock().set_data(&st.vm_id, &key, &value, cas as u32);
            Ok(if ok { OK } else { CAS_MISMATCH })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C, np: i32, nl: i32, token_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_register_shared_queue") {
                return Ok(INTERNAL_FAILURE);
            }
            let Some(name) = read_str(&mut c, np, nl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let id = {
                let st = c.data();
                let mut sh = st.host.lock();
                let existing = sh
                    .queues
                    .iter()
                    .find(|(_, q)| q.vm_id == st.vm_id && q.name == name)
                    .map(|(id, _)| *id);
                match existing {
                    Some(id) => {
                        if let Some(q) = sh.queues.get_mut(&id) {
                            q.owner = st.serial;
                        }
                        id
                    }
                    None => {
                        let id = sh.next_queue;
                        sh.next_queue += 1;
                        sh.queues.insert(
                            id,
                            crate::host::Queue {
                                vm_id: st.vm_id.clone(),
                                name,
                                items: Default::default(),
                                owner: st.serial,
                            },
                        );
                        id
                    }
                }
            };
            Ok(if write_u32(&mut c, token_ptr, id) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C, vp: i32, vl: i32, np: i32, nl: i32, token_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_resolve_shared_queue") {
                return Ok(INTERNAL_FAILURE);
            }
            let (Some(vm_id), Some(name)) = (read_str(&mut c, vp, vl), read_str(&mut c, np, nl))
            else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let id = c
                .data()
                .host
                .lock()
                .queues
                .iter()
                .find(|(_, q)| q.vm_id == vm_id && q.name == name)
                .map(|(id, _)| *id);
            match id {
                Some(id) => Ok(if write_u32(&mut c, token_ptr, id) {
                    OK
                } else {
                    INVALID_MEMORY_ACCESS
                }),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C, token: i32, dp: i32, dl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_enqueue_shared_queue") {
                return Ok(INTERNAL_FAILURE);
            }
            let Some(data) = read(&mut c, dp, dl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let st = c.data();
            let mut sh = st.host.lock();
            match sh.queues.get_mut(&(token as u32)) {
                Some(q) => {
                    q.items.push_back(data);
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C, token: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_dequeue_shared_queue") {
                return Ok(INTERNAL_FAILURE);
            }
            let item = {
                let st = c.data();
                let mut sh = st.host.lock();
                match sh.queues.get_mut(&(token as u32)) {
                    None => return Ok(NOT_FOUND),
                    Some(q) => q.items.pop_front(),
                }
            };
            match item {
                None => Ok(EMPTY),
                Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
            }
        },
    )?;
    Ok(())
}

/// Header maps: readable and writable only while Envoy holds them.
fn define_header_maps(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C, mt: i32, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_header_map_value") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=7).contains(&mt) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(key) = read_str(&mut c, kp, kl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let key = key.to_ascii_lowercase();
            let value = {
                let st = c.data();
                match const_map(st, mt) {
                    None => {
                        let log = st
                            .streams
                            .get(&st.ctx())
                            .is_some_and(|s| s.access_log_phase);
                        // Envoy: a map that does not exist now is BadArgument, except in on_log.
                        return Ok(if log { NOT_FOUND } else { BAD_ARGUMENT });
                    }
                    Some(m) => m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
                }
            };
            match value {
                None => Ok(NOT_FOUND),
                Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C, mt: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_header_map_pairs") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=7).contains(&mt) {
                return Ok(BAD_ARGUMENT);
            }
            // Envoy returns an empty map (Ok) when the map does not exist now.
            let pairs = const_map(c.data(), mt).cloned().unwrap_or_default();
            let bytes = if pairs.is_empty() {
                Vec::new()
            } else {
                wire::encode_pairs(&pairs)
            };
            copy_out(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C, mt: i32, ptr: i32, len: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_set_header_map_pairs") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=7).contains(&mt) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(data) = read(&mut c, ptr, len) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let pairs: Pairs = wire::decode_pairs(&data)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let st = c.data_mut();
            match mut_map(st, mt) {
                None => Ok(BAD_ARGUMENT),
                Some(m) => {
                    *m = pairs;
                    map_touched(st, mt);
                    Ok(OK)
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C, mt: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_add_header_map_value") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=7).contains(&mt) {
                return Ok(BAD_ARGUMENT);
            }
            let (Some(k), Some(v)) = (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let st = c.data_mut();
            match mut_map(st, mt) {
                None => Ok(BAD_ARGUMENT),
                Some(m) => {
                    m.push((k.to_ascii_lowercase(), v));
                    map_touched(st, mt);
                    Ok(OK)
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C, mt: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_replace_header_map_value") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=7).contains(&mt) {
                return Ok(BAD_ARGUMENT);
            }
            let (Some(k), Some(v)) = (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let k = k.to_ascii_lowercase();
            let st = c.data_mut();
            match mut_map(st, mt) {
                None => Ok(BAD_ARGUMENT),
                Some(m) => {
                    // Envoy `setCopy`: every entry of the key goes, the new value is appended.
                    m.retain(|(key, _)| *key != k);
                    m.push((k, v));
                    map_touched(st, mt);
                    Ok(OK)
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C, mt: i32, kp: i32, kl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_remove_header_map_value") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=7).contains(&mt) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(k) = read_str(&mut c, kp, kl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let k = k.to_ascii_lowercase();
            let st = c.data_mut();
            match mut_map(st, mt) {
                None => Ok(BAD_ARGUMENT),
                Some(m) => {
                    m.retain(|(key, _)| *key != k);
                    map_touched(st, mt);
                    Ok(OK)
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C, mt: i32, ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_header_map_size") {
                return Ok(INTERNAL_FAILURE);
            }
            let size = match mut_map(c.data_mut(), mt) {
                None => return Ok(BAD_ARGUMENT),
                Some(m) => m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            };
            Ok(if write_u32(&mut c, ptr, size as u32) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    Ok(())
}

/// Buffers: request/response bodies, HTTP call responses, configurations.
fn define_buffers(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C, bt: i32, len_ptr: i32, flags_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_buffer_status") {
                return Ok(INTERNAL_FAILURE);
            }
            let len = match const_buffer(c.data(), bt) {
                Ok(b) => b.len(),
                Err(code) => return Ok(code),
            };
            Ok(
                if write_u32(&mut c, len_ptr, len as u32) && write_u32(&mut c, flags_ptr, 0) {
                    OK
                } else {
                    INVALID_MEMORY_ACCESS
                },
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C, bt: i32, start: i32, length: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_buffer_bytes") {
                return Ok(INTERNAL_FAILURE);
            }
            let (start, length) = (start as u32 as usize, length as u32 as usize);
            let bytes = match const_buffer(c.data(), bt) {
                Err(code) => return Ok(code),
                Ok(b) => {
                    if start.checked_add(length).is_none() {
                        return Ok(BAD_ARGUMENT);
                    }
                    let end = (start + length).min(b.len());
                    b.get(start.min(end)..end)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default()
                }
            };
            // Envoy writes nothing for an empty range: the SDK sees a null pointer (None).
            if bytes.is_empty() {
                return Ok(OK);
            }
            copy_out(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C, bt: i32, start: i32, length: i32, dp: i32, dl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_set_buffer_bytes") {
                return Ok(INTERNAL_FAILURE);
            }
            let Some(data) = read(&mut c, dp, dl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let (start, length) = (start as u32 as usize, length as u32 as usize);
            let st = c.data_mut();
            let ctx = st.ctx();
            let buf = match (bt, st.streams.get_mut(&ctx)) {
                (0, Some(s)) if s.req.body_live => &mut s.req.body,
                (1, Some(s)) if s.resp.body_live => &mut s.resp.body,
                (4 | 6 | 7 | 8, _) => return Ok(BAD_ARGUMENT),
                (t, _) if !(0..=8).contains(&t) => return Ok(BAD_ARGUMENT),
                _ => return Ok(NOT_FOUND),
            };
            // Envoy `Buffer::copyFrom`: start 0 replaces the first `length` bytes, a start at or
            // past the end appends; anything in between is refused.
            if start == 0 {
                let drain = length.min(buf.len());
                buf.drain(..drain);
                buf.splice(0..0, data);
            } else if start >= buf.len() {
                buf.extend_from_slice(&data);
            } else {
                return Ok(BAD_ARGUMENT);
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

/// Outgoing HTTP calls (`dispatch_http_call`).
fn define_http_calls(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_ptr: i32|
         -> Result<i32> {
            if restricted(&mut c, "proxy_http_call") {
                return Ok(INTERNAL_FAILURE);
            }
            let (Some(cluster), Some(h), Some(body), Some(t)) = (
                read_str(&mut c, up, ul),
                read(&mut c, hp, hl),
                read(&mut c, bp, bl),
                read(&mut c, tp, tl),
            ) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            if !write_u32(&mut c, token_ptr, 0) {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            if timeout < 0 {
                return Ok(BAD_ARGUMENT);
            }
            let headers = wire::decode_pairs(&h);
            let known = match &c.data().host.lock().clusters {
                None => true,
                Some(set) => set.contains(&cluster),
            };
            // Envoy: unknown cluster, or no :path / :method / :authority → BadArgument.
            if !known
                || header_value(&headers, ":path").is_none()
                || header_value(&headers, ":method").is_none()
                || header_value(&headers, ":authority").is_none()
            {
                return Ok(BAD_ARGUMENT);
            }
            let now_ms = c.data().host.lock().now_ns / 1_000_000;
            let st = c.data_mut();
            let token = st.next_token;
            st.next_token = st.next_token.wrapping_add(1).max(1);
            let call = HttpCall {
                token,
                cluster,
                headers,
                body,
                trailers: wire::decode_pairs(&t),
                timeout_ms: timeout as u32,
                dispatched_at_ms: now_ms,
                context_id: st.ctx(),
            };
            st.pending_calls.insert(token, call.clone());
            st.all_calls.push(call);
            Ok(if write_u32(&mut c, token_ptr, token) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    Ok(())
}

/// gRPC is not modelled: Envoy registers these functions, and a module that calls one fails
/// the test.
fn define_grpc(l: &mut Linker<State>) -> Result<()> {
    fn unmodelled(name: &str) -> Result<i32> {
        bail!("{name}: gRPC is not modelled by the ABI test host")
    }
    #[rustfmt::skip]
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |_c: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            unmodelled("proxy_grpc_call")
        },
    )?;
    #[rustfmt::skip]
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_c: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            unmodelled("proxy_grpc_stream")
        },
    )?;
    for n in ["proxy_grpc_close", "proxy_grpc_cancel"] {
        l.func_wrap("env", n, move |_c: C, _: i32| unmodelled(n))?;
    }
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: C, _: i32, _: i32, _: i32, _: i32| unmodelled("proxy_grpc_send"),
    )?;
    Ok(())
}

/// Metrics: Envoy's stats store, shared by every VM of the proxy.
fn define_metrics(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C, kind: i32, np: i32, nl: i32, id_ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_define_metric") {
                return Ok(INTERNAL_FAILURE);
            }
            let kind_enum = match kind {
                0 => crate::host::MetricKind::Counter,
                1 => crate::host::MetricKind::Gauge,
                2 => crate::host::MetricKind::Histogram,
                _ => return Ok(BAD_ARGUMENT),
            };
            let Some(name) = read_str(&mut c, np, nl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let st = c.data_mut();
            // Envoy ids carry the kind in the low two bits.
            let id = (st.next_metric_seq << 2) | kind as u32;
            st.next_metric_seq += 1;
            st.metric_ids.insert(id, name.clone());
            st.host
                .lock()
                .metrics
                .entry(name)
                .or_insert_with(|| crate::host::Metric {
                    kind: kind_enum,
                    value: 0,
                    samples: Vec::new(),
                });
            Ok(if write_u32(&mut c, id_ptr, id) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C, id: i32, offset: i64| -> Result<i32> {
            if restricted(&mut c, "proxy_increment_metric") {
                return Ok(INTERNAL_FAILURE);
            }
            let st = c.data();
            let Some(name) = st.metric_ids.get(&(id as u32)) else {
                return Ok(NOT_FOUND);
            };
            let mut sh = st.host.lock();
            let Some(m) = sh.metrics.get_mut(name) else {
                return Ok(NOT_FOUND);
            };
            match id & 3 {
                0 if offset > 0 => m.value += offset,
                1 => m.value += offset,
                _ => return Ok(BAD_ARGUMENT),
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C, id: i32, value: i64| -> Result<i32> {
            if restricted(&mut c, "proxy_record_metric") {
                return Ok(INTERNAL_FAILURE);
            }
            let st = c.data();
            let Some(name) = st.metric_ids.get(&(id as u32)) else {
                return Ok(NOT_FOUND);
            };
            let mut sh = st.host.lock();
            let Some(m) = sh.metrics.get_mut(name) else {
                return Ok(NOT_FOUND);
            };
            match id & 3 {
                0 => m.value += value,
                1 => m.value = value,
                _ => m.samples.push(value as u64),
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C, id: i32, ptr: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_get_metric") {
                return Ok(INTERNAL_FAILURE);
            }
            let value = {
                let st = c.data();
                let Some(name) = st.metric_ids.get(&(id as u32)) else {
                    return Ok(NOT_FOUND);
                };
                if id & 3 == 2 {
                    return Ok(BAD_ARGUMENT);
                }
                st.host
                    .lock()
                    .metrics
                    .get(name)
                    .map(|m| m.value)
                    .unwrap_or(0)
            };
            Ok(if write_u64(&mut c, ptr, value as u64) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    Ok(())
}

/// Contexts and streams: effective context, done, foreign functions, continue/close.
fn define_stream_control(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C, ctx: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_set_effective_context") {
                return Ok(INTERNAL_FAILURE);
            }
            let st = c.data_mut();
            let ctx = ctx as u32;
            if ctx == st.root_ctx || st.streams.contains_key(&ctx) {
                st.effective = Some(ctx);
                Ok(OK)
            } else {
                Ok(BAD_ARGUMENT)
            }
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: C| -> Result<i32> {
        if restricted(&mut c, "proxy_done") {
            return Ok(INTERNAL_FAILURE);
        }
        c.data_mut().done_called = true;
        Ok(OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C, np: i32, nl: i32, _ap: i32, _al: i32, rp: i32, rl: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_call_foreign_function") {
                return Ok(INTERNAL_FAILURE);
            }
            let Some(name) = read_str(&mut c, np, nl) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            c.data_mut().foreign_calls.push(name.clone());
            if name == "clear_route_cache" {
                let st = c.data_mut();
                let ctx = st.ctx();
                if let Some(s) = st.streams.get_mut(&ctx) {
                    s.route_cache_cleared = true;
                }
                if rp != 0 {
                    write_u32(&mut c, rp, 0);
                }
                if rl != 0 {
                    write_u32(&mut c, rl, 0);
                }
                return Ok(OK);
            }
            Ok(NOT_FOUND)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C, ty: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_continue_stream") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=3).contains(&ty) {
                return Ok(BAD_ARGUMENT);
            }
            let st = c.data_mut();
            let ctx = st.ctx();
            if let Some(s) = st.streams.get_mut(&ctx) {
                s.resume(ty);
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C, ty: i32| -> Result<i32> {
            if restricted(&mut c, "proxy_close_stream") {
                return Ok(INTERNAL_FAILURE);
            }
            if !(0..=3).contains(&ty) {
                return Ok(BAD_ARGUMENT);
            }
            let st = c.data_mut();
            let ctx = st.ctx();
            if let Some(s) = st.streams.get_mut(&ctx) {
                s.reset = true;
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

/// The two emscripten helpers Envoy registers.
fn define_emscripten(l: &mut Linker<State>) -> Result<()> {
    l.func_wrap("env", "pthread_equal", |_c: C, a: i32, b: i32| -> i32 {
        i32::from(a == b)
    })?;
    l.func_wrap("env", "emscripten_notify_memory_growth", |_c: C, _: i32| {})?;
    Ok(())
}

/// Envoy's own WASI preview1 subset (not a general WASI): stdout/stderr become logs, no
/// files, no preopens, only the realtime clock, random bytes from the host.
fn define_wasi(l: &mut Linker<State>, m: &str) -> Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, nwritten: i32| -> Result<i32> {
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return Ok(WASI_EBADF),
            };
            let mut out = Vec::new();
            for i in 0..n {
                let Some(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return Ok(WASI_EFAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Some(bytes) = read(&mut c, ptr, len) else {
                    return Ok(WASI_EFAULT);
                };
                out.extend_from_slice(&bytes);
            }
            let written = out.len();
            if written > 0 {
                if out.last() == Some(&b'\n') {
                    out.pop();
                }
                c.data_mut()
                    .log(level, String::from_utf8_lossy(&out).into_owned());
            }
            Ok(if write_u32(&mut c, nwritten, written as u32) {
                0
            } else {
                WASI_EFAULT
            })
        },
    )?;
    l.func_wrap(
        m,
        "fd_read",
        |_c: C, _: i32, _: i32, _: i32, _: i32| -> i32 { WASI_ENOSYS },
    )?;
    l.func_wrap(
        m,
        "fd_seek",
        |mut c: C, _: i32, _: i64, _: i32, _: i32| -> i32 {
            c.data_mut()
                .log(LogLevel::Error, "wasi_unstable fd_seek".into());
            0
        },
    )?;
    l.func_wrap(m, "fd_close", |mut c: C, _: i32| -> i32 {
        c.data_mut()
            .log(LogLevel::Error, "wasi_unstable fd_close".into());
        0
    })?;
    l.func_wrap(m, "fd_fdstat_get", |mut c: C, fd: i32, out: i32| -> i32 {
        if fd != 1 && fd != 2 {
            return WASI_EBADF;
        }
        // 24 bytes, fs_rights_base = FD_WRITE.
        let mut stat = [0u8; 24];
        stat[8] = 64;
        if write(&mut c, out, &stat) {
            0
        } else {
            WASI_EFAULT
        }
    })?;
    l.func_wrap(m, "environ_get", |_c: C, _: i32, _: i32| -> i32 { 0 })?;
    l.func_wrap(
        m,
        "environ_sizes_get",
        |mut c: C, count: i32, size: i32| -> i32 {
            if write_u32(&mut c, count, 0) && write_u32(&mut c, size, 0) {
                0
            } else {
                WASI_EFAULT
            }
        },
    )?;
    l.func_wrap(m, "args_get", |_c: C, _: i32, _: i32| -> i32 { 0 })?;
    l.func_wrap(
        m,
        "args_sizes_get",
        |mut c: C, argc: i32, size: i32| -> i32 {
            if write_u32(&mut c, argc, 0) && write_u32(&mut c, size, 0) {
                0
            } else {
                WASI_EFAULT
            }
        },
    )?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, out: i32| -> i32 {
            // Envoy answers only the realtime clock; std's Instant (monotonic) gets ENOTSUP.
            if id != 0 {
                return WASI_ENOTSUP;
            }
            let now = c.data().host.lock().now_ns;
            if write_u64(&mut c, out, now) {
                0
            } else {
                WASI_EFAULT
            }
        },
    )?;
    l.func_wrap(m, "random_get", |mut c: C, ptr: i32, len: i32| -> i32 {
        let mut buf = vec![0u8; len as u32 as usize];
        c.data().host.lock().random_bytes(&mut buf);
        if write(&mut c, ptr, &buf) {
            0
        } else {
            WASI_EFAULT
        }
    })?;
    l.func_wrap(m, "proc_exit", |_c: C, code: i32| -> Result<()> {
        bail!("module called WASI proc_exit({code}); Envoy logs an error and the VM is unusable")
    })?;
    l.func_wrap(
        m,
        "path_open",
        |_c: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| -> i32 {
            WASI_EBADF
        },
    )?;
    l.func_wrap(m, "fd_prestat_get", |_c: C, _: i32, _: i32| -> i32 {
        WASI_EBADF
    })?;
    l.func_wrap(
        m,
        "fd_prestat_dir_name",
        |_c: C, _: i32, _: i32, _: i32| -> i32 { WASI_ENOSYS },
    )?;
    Ok(())
}

/// A local reply built like Envoy's `sendLocalReply`: `:status`, the module's headers, and
/// for a non-empty body `content-length` plus `content-type: text/plain` unless set.
pub(crate) fn local_reply_headers(reply: &LocalReply) -> Pairs {
    let mut h: Pairs = vec![(":status".into(), reply.status.to_string().into_bytes())];
    h.extend(
        reply
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
    );
    if !reply.body.is_empty() {
        h.retain(|(k, _)| k != "content-length");
        h.push((
            "content-length".into(),
            reply.body.len().to_string().into_bytes(),
        ));
        if header_value(&h, "content-type").is_none() {
            h.push(("content-type".into(), b"text/plain".to_vec()));
        }
    }
    h
}
