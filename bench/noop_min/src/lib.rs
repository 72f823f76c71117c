//! The no-op filter of the proxy benchmark on modelgate's dispatcher: one stream callback,
//! which continues.

use modelgate_glue::dispatch::{Root, Stream};

modelgate_glue::export_filter!(Noop, [request_headers]);

#[derive(Default)]
struct Noop;

impl Root for Noop {
    type Stream = Noop;

    fn on_configure(&mut self, _config: &[u8]) -> bool {
        true
    }

    fn new_stream(&mut self, _context_id: u32) -> Option<Noop> {
        Some(Noop)
    }
}

impl Stream for Noop {
    fn done(&self) -> bool {
        true
    }
}
