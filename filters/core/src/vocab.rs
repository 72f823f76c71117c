//! The names modelgate's parts share: the headers the filters set and read (between
//! filters, with Envoy routes and with clients), the shared-data keys every VM of a proxy
//! reads and writes, and the request criticality. docs/CONTRACTS.md describes each; filters
//! use these constants, never a copy of the text.

// ---------------------------------------------------------------------------------------
// Headers

/// Request header carrying the chosen target model (set by the router; routes match on it).
pub const MODEL_HEADER: &str = "x-modelgate-model";
/// Request header carrying the [`Criticality`] (set by the router; a client may only lower it).
pub const CRITICALITY_HEADER: &str = "x-modelgate-criticality";
/// Request header carrying the prefix-affinity hash (for RING_HASH / MAGLEV).
pub const PREFIX_HASH_HEADER: &str = "x-modelgate-prefix-hash";
/// Response header with which the load shedder marks its 429s: `x-modelgate-shed: <reason>`.
pub const SHED_HEADER: &str = "x-modelgate-shed";
/// Response header with which the readiness gate marks its 503s: `x-modelgate-gated: <reason>`.
pub const GATED_HEADER: &str = "x-modelgate-gated";
/// ORCA response header read by Envoy's `client_side_weighted_round_robin`.
pub const ORCA_HEADER: &str = "endpoint-load-metrics";
/// Request header naming the pod (`IP:port`) the endpoint picker chose, read by the
/// cluster's `override_host` policy; the picker removes any client-sent value.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Its binary (protobuf) form, which Envoy prefers: the load shedder removes it wherever it
/// reports, so a model server cannot report its own load.
pub const ORCA_BIN_HEADER: &str = "endpoint-load-metrics-bin";
/// Request header naming the tenant flow control shares capacity between (the load
/// shedder's default `flow.tenant_header`).
pub const TENANT_HEADER: &str = "x-modelgate-tenant";

// ---------------------------------------------------------------------------------------
// Shared-data keys (every modelgate filter of a proxy runs in vm_id "modelgate")

/// The readiness gate's `state::ReadinessSnapshot`.
pub const READINESS_KEY: &str = "modelgate.readiness.v1";
/// The scraper's `state::QueueSnapshot`.
pub const QUEUE_KEY: &str = "modelgate.queue.v1";
/// Prefix of the poll leases (`<prefix><purpose>`), see `crate::lease`.
pub const LEASE_PREFIX: &str = "modelgate.lease.";
/// The load shedder's per-worker in-flight table (`shed_tables::WorkerTable`).
pub const WORKERS_KEY: &str = "modelgate.shedder.workers.v1";
/// The gateway load shedder's pool table (`shed_tables::PoolTable`).
pub const POOL_KEY: &str = "modelgate.shedder.pool.v1";
/// The snapshot sequence numbers ml_metrics has recorded (`metrics::Cursor`).
pub const METRICS_CURSOR_KEY: &str = "modelgate.metrics.cursor.v1";

// ---------------------------------------------------------------------------------------
// Criticality

/// How important a request is ([`CRITICALITY_HEADER`]). Ordered: `Sheddable < Standard <
/// Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Criticality {
    Sheddable,
    Standard,
    Critical,
}

impl Criticality {
    pub const ALL: [Criticality; 3] = [Self::Critical, Self::Standard, Self::Sheddable];
    /// The accepted values, as config errors list them.
    pub const NAMES: &'static str = "\"critical\", \"standard\", \"sheddable\"";

    /// A class name, ignoring case and surrounding blanks; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| s.eq_ignore_ascii_case(c.as_str()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Standard => "standard",
            Self::Sheddable => "sheddable",
        }
    }

    /// 0, 1, 2 in the order `Sheddable, Standard, Critical`: an index into per-class tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criticality_parses_names_case_insensitively_and_orders_by_importance() {
        assert_eq!(
            Criticality::parse(" Critical "),
            Some(Criticality::Critical)
        );
        assert_eq!(
            Criticality::parse("SHEDDABLE"),
            Some(Criticality::Sheddable)
        );
        assert_eq!(Criticality::parse("urgent"), None);
        assert!(Criticality::Sheddable < Criticality::Standard);
        assert!(Criticality::Standard < Criticality::Critical);
        for c in Criticality::ALL {
            assert_eq!(Criticality::parse(c.as_str()), Some(c));
            assert!(Criticality::NAMES.contains(c.as_str()));
        }
    }

    #[test]
    fn header_names_are_lower_case_tokens() {
        for h in [
            MODEL_HEADER,
            CRITICALITY_HEADER,
            PREFIX_HASH_HEADER,
            SHED_HEADER,
            GATED_HEADER,
            ORCA_HEADER,
            ORCA_BIN_HEADER,
            TENANT_HEADER,
        ] {
            assert!(h.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
    }
}
