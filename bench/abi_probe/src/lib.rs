//! The ABI cost probe of the proxy benchmark: per request it makes exactly the host calls its
//! configuration names, so one run prices each kind of call against the same module doing
//! nothing. Configuration: comma-separated `op` or `op=N`:
//! `get=N` header reads, `pairs` one read of the whole header map, `set=N` header
//! replacements, `time=N` clock reads, `metric=N` counter increments, `pause` hold the
//! headers until the body ends, `body` read the whole body in the body callback.

use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::{headers, host};
use modelgate_glue::types::{Action, BufferType, MapType, MetricType};

modelgate_glue::export_filter!(Probe, [request_headers, request_body]);

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
}

/// One raw header read (what a filter paid per read before `headers` kept the map).
fn get(name: &str) -> usize {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: on success the host hands over an allocation of `size` bytes.
    unsafe {
        if proxy_get_header_map_value(0, name.as_ptr(), name.len(), &mut data, &mut size) != 0
            || data.is_null()
        {
            return 0;
        }
        Vec::from_raw_parts(data, size, size).len()
    }
}

const NAMES: [&str; 8] = [
    "x-probe-0", "x-probe-1", "x-probe-2", "x-probe-3", "x-probe-4", "x-probe-5", "x-probe-6",
    "x-probe-7",
];
const READS: [&str; 6] = [":method", ":path", "content-type", "content-length", "x-absent", "host"];

#[derive(Default, Clone, Copy)]
struct Ops {
    get: usize,
    pairs: bool,
    set: usize,
    time: usize,
    metric: usize,
    pause: bool,
    body: bool,
    counter: u32,
}

#[derive(Default)]
struct Probe {
    ops: Ops,
}

impl Root for Probe {
    type Stream = ProbeStream;

    fn on_configure(&mut self, config: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(config) else {
            return false;
        };
        let mut ops = Ops::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (op, n) = match item.split_once('=') {
                Some((op, n)) => match n.parse::<usize>() {
                    Ok(n) => (op, n),
                    Err(_) => return false,
                },
                None => (item, 1),
            };
            match op {
                "get" => ops.get = n,
                "pairs" => ops.pairs = true,
                "set" => ops.set = n,
                "time" => ops.time = n,
                "metric" => ops.metric = n,
                "pause" => ops.pause = true,
                "body" => ops.body = true,
                _ => return false,
            }
        }
        if ops.metric > 0 {
            match host::define_metric(MetricType::Counter, "probe_requests") {
                Ok(id) => ops.counter = id,
                Err(_) => return false,
            }
        }
        self.ops = ops;
        true
    }

    fn new_stream(&mut self, _context_id: u32) -> Option<ProbeStream> {
        Some(ProbeStream { ops: self.ops, done: false })
    }
}

struct ProbeStream {
    ops: Ops,
    done: bool,
}

impl Stream for ProbeStream {
    fn on_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let ops = self.ops;
        let mut seen = 0usize;
        for i in 0..ops.get {
            let name = READS.get(i % READS.len()).copied().unwrap_or("host");
            seen += get(name);
        }
        if ops.pairs {
            let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
            // SAFETY: on success the host hands over an allocation of `size` bytes.
            unsafe {
                if proxy_get_header_map_pairs(0, &mut data, &mut size) == 0 && !data.is_null() {
                    seen += Vec::from_raw_parts(data, size, size).len();
                }
            }
        }
        for i in 0..ops.time {
            seen += (host::now_ns() as usize).wrapping_add(i) & 1;
        }
        for _ in 0..ops.metric {
            let _ = host::increment_metric(ops.counter, 1);
        }
        for i in 0..ops.set {
            let name = NAMES.get(i % NAMES.len()).copied().unwrap_or("x-probe");
            let _ = headers::set(MapType::HttpRequestHeaders, name, Some(b"1"));
        }
        std::hint::black_box(seen);
        if ops.pause && !end_of_stream {
            return Action::Pause;
        }
        self.done = !ops.body;
        Action::Continue
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return if self.ops.pause { Action::Pause } else { Action::Continue };
        }
        if self.ops.body {
            let got = host::buffer(BufferType::HttpRequestBody, 0, body_size);
            std::hint::black_box(got);
        }
        self.done = true;
        Action::Continue
    }

    fn done(&self) -> bool {
        self.done
    }
}
