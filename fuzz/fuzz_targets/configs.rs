//! Every plugin configuration parser on arbitrary bytes: an answer (accepted or an error
//! naming a field), never a panic. The first byte picks the filter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::config::{parse_json, FilterConfig};
use modelgate_core::metrics::MetricsConfig;
use modelgate_core::picker::PickerConfig;
use modelgate_core::readiness::ReadinessConfig;
use modelgate_core::router::Router;
use modelgate_core::scrape::{ScrapeConfig, ScrapeConfigJson};
use modelgate_core::shed::ShedConfig;

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else {
        return;
    };
    let error = match which % 6 {
        0 => Router::parse(data).err(),
        1 => ReadinessConfig::parse(data).err(),
        2 => ShedConfig::parse(data).err(),
        3 => MetricsConfig::parse(data).err(),
        5 => PickerConfig::parse(data).err(),
        _ => match parse_json::<ScrapeConfigJson>(data) {
            Ok(raw) => ScrapeConfig::validate(&raw, "scrape").err(),
            Err(e) => Some(e),
        },
    };
    if let Some(e) = error {
        assert!(!e.to_string().is_empty());
    }
});
