//! ORCA `endpoint-load-metrics` values from upstreams: never panic, and a parsed report is
//! always finite and non-negative (a NaN or infinity would poison the pool's average).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::orca::parse_orca;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(r) = parse_orca(&text) {
        assert!(r.utilization.is_finite() && r.utilization >= 0.0, "{r:?}");
        if let Some(rps) = r.rps {
            assert!(rps.is_finite() && rps >= 0.0, "{r:?}");
        }
    }
});
