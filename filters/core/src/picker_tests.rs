#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::config::FilterConfig;

fn config(extra: &str) -> PickerConfig {
    let json = format!(
        r#"{{"pools": {{"m": ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"]}}{extra}}}"#
    );
    PickerConfig::parse(json.as_bytes()).unwrap()
}

fn idle(n: usize) -> Vec<PodLoad> {
    vec![PodLoad::default(); n]
}

/// A prefix whose prompt is `kb` KB long.
fn sized(hash: u64, kb: u64) -> Option<Prefix> {
    Some(Prefix::new(hash, Some(kb * 1024)))
}

/// A report of utilisation `u` at `at_ms`, without a queue.
fn util(u: f64, at_ms: u64) -> HostReport {
    HostReport {
        utilization: u,
        queue: None,
        at_ms,
    }
}

fn pod_of(p: Pick) -> usize {
    match p {
        Pick::Pod { index, .. } => index,
        other => panic!("expected a pod, got {other:?}"),
    }
}

#[test]
fn same_prefix_same_pod_and_prefixes_spread_over_pods() {
    let cfg = config("");
    let pods = &cfg.pools[0].pods;
    let loads = idle(4);
    let mut counts = [0u32; 4];
    for prefix in 0..4000u64 {
        let h = prefix.wrapping_mul(0x1234_5678_9abc_def1);
        let a = cfg.pick(Some(Prefix::from(h)), pods, &loads, Criticality::Standard);
        assert_eq!(
            a,
            cfg.pick(Some(Prefix::from(h)), pods, &loads, Criticality::Standard)
        );
        assert!(matches!(
            a,
            Pick::Pod {
                reason: PickReason::Affinity,
                ..
            }
        ));
        counts[pod_of(a)] += 1;
    }
    // Rendezvous spreads evenly: each of 4 pods gets 1000 ± 15%.
    assert!(
        counts.iter().all(|c| (850..=1150).contains(c)),
        "{counts:?}"
    );
}

#[test]
fn replicas_agree_whatever_the_pod_list_order() {
    // A second gateway may list the pods in another order: the chosen address is the same.
    let a = config("");
    let b = PickerConfig::parse(
        br#"{"pools": {"m": ["10.0.0.4:8000", "10.0.0.3:8000", "10.0.0.1:8000", "10.0.0.2:8000"]}}"#,
    )
    .unwrap();
    for h in [1u64, 99, 12345, u64::MAX] {
        let pa = pod_of(a.pick(
            Some(Prefix::from(h)),
            &a.pools[0].pods,
            &idle(4),
            Criticality::Standard,
        ));
        let pb = pod_of(b.pick(
            Some(Prefix::from(h)),
            &b.pools[0].pods,
            &idle(4),
            Criticality::Standard,
        ));
        assert_eq!(a.pools[0].pods[pa].address, b.pools[0].pods[pb].address);
    }
}

#[test]
fn removing_a_pod_moves_only_its_prefixes() {
    let cfg = config("");
    let pods = &cfg.pools[0].pods;
    let fewer: Vec<Pod> = pods[..3].to_vec();
    for h in 0..2000u64 {
        let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let before = pod_of(cfg.pick(Some(Prefix::from(h)), pods, &idle(4), Criticality::Standard));
        let after = pod_of(cfg.pick(
            Some(Prefix::from(h)),
            &fewer,
            &idle(3),
            Criticality::Standard,
        ));
        if before < 3 {
            assert_eq!(before, after);
        }
    }
}

#[test]
fn a_busy_prefix_pod_spills_to_the_next_ranked_pod_in_a_fixed_order() {
    // A 2 KB prompt at 1 request per KB: a cold prefill costs 2 requests of queue.
    let cfg = config(r#", "cold_prefill_per_kb": 1"#);
    let pods = &cfg.pools[0].pods;
    let h = 42;
    let first = pod_of(cfg.pick(sized(h, 2), pods, &idle(4), Criticality::Standard));
    // While waiting costs no more than the cold prefill, the request stays.
    let mut loads = idle(4);
    loads[first].in_flight = 2;
    assert_eq!(
        cfg.pick(sized(h, 2), pods, &loads, Criticality::Standard),
        Pick::Pod {
            index: first,
            reason: PickReason::Affinity
        }
    );
    // Beyond it, it spills; the spill target is the same every time.
    loads[first].in_flight = 3;
    let spill = cfg.pick(sized(h, 2), pods, &loads, Criticality::Standard);
    let Pick::Pod {
        index: second,
        reason: PickReason::Spill,
    } = spill
    else {
        panic!("{spill:?}")
    };
    assert_ne!(second, first);
    assert_eq!(
        spill,
        cfg.pick(sized(h, 2), pods, &loads, Criticality::Standard)
    );
    // The spill target is the prefix's second choice: without the first pod it is the top.
    let without: Vec<Pod> = pods
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, p)| p.clone())
        .collect();
    let top = pod_of(cfg.pick(
        Some(Prefix::from(h)),
        &without,
        &idle(3),
        Criticality::Standard,
    ));
    assert_eq!(without[top].address, pods[second].address);
}

#[test]
fn a_long_prompt_waits_at_its_pod_where_a_short_one_spills() {
    // 1 request of queue per KB; the prefix's pod has 6 requests more than the others.
    let cfg = config(r#", "cold_prefill_per_kb": 1"#);
    let pods = &cfg.pools[0].pods;
    let h = 11;
    let first = pod_of(cfg.pick(sized(h, 1), pods, &idle(4), Criticality::Standard));
    let mut loads = idle(4);
    loads[first].in_flight = 6;
    // A 4 KB prompt prefills cold elsewhere sooner than it waits for 6 requests here.
    let short = cfg.pick(sized(h, 4), pods, &loads, Criticality::Standard);
    assert!(
        matches!(
            short,
            Pick::Pod {
                reason: PickReason::Spill,
                ..
            }
        ),
        "{short:?}"
    );
    // An 8 KB prompt waits: its cold prefill would cost more than the queue.
    assert_eq!(
        cfg.pick(sized(h, 8), pods, &loads, Criticality::Standard),
        Pick::Pod {
            index: first,
            reason: PickReason::Affinity
        }
    );
}

#[test]
fn a_prompt_of_unknown_size_is_priced_at_8_kb() {
    let pods = config("").pools[0].pods.clone();
    let h = 11;
    let first = pod_of(config("").pick(sized(h, 1), &pods, &idle(4), Criticality::Standard));
    let mut loads = idle(4);
    loads[first].in_flight = 6;
    // 8 KB × 0.5 = 4 requests of queue: spills; × 1 = 8: stays.
    for (per_kb, spills) in [("0.5", true), ("1", false)] {
        let cfg = config(&format!(r#", "cold_prefill_per_kb": {per_kb}"#));
        let p = cfg.pick(Some(Prefix::from(h)), &pods, &loads, Criticality::Standard);
        assert_eq!(pod_of(p) != first, spills, "{per_kb} per KB: {p:?}");
    }
}

#[test]
fn free_cold_prefills_make_it_least_loaded_among_equals() {
    let cfg = config(r#", "cold_prefill_per_kb": 0"#);
    let pods = &cfg.pools[0].pods;
    let h = 3;
    let first = pod_of(cfg.pick(sized(h, 16), pods, &idle(4), Criticality::Standard));
    let mut loads = idle(4);
    loads[first].in_flight = 1;
    assert_ne!(
        pod_of(cfg.pick(sized(h, 16), pods, &loads, Criticality::Standard)),
        first
    );
}

#[test]
fn reported_utilisation_counts_other_gateways_load() {
    let cfg = config(r#", "capacity": 4, "cold_prefill_per_kb": 1"#);
    let pods = &cfg.pools[0].pods;
    let h = 7;
    let first = pod_of(cfg.pick(sized(h, 1), pods, &idle(4), Criticality::Standard));
    let mut loads = idle(4);
    // This proxy sends it nothing, but the pod reports 0.75 × 4 = 3 requests.
    loads[first].utilization = Some(0.75);
    assert!(matches!(
        cfg.pick(sized(h, 1), pods, &loads, Criticality::Standard),
        Pick::Pod {
            reason: PickReason::Spill,
            ..
        }
    ));
}

#[test]
fn saturated_pods_are_skipped_unless_all_are() {
    let cfg = config(
        r#", "saturation": {"utilization": 0.9, "in_flight": 8}, "cold_prefill_per_kb": 100"#,
    );
    let pods = &cfg.pools[0].pods;
    let h = 5;
    let first = pod_of(cfg.pick(Some(Prefix::from(h)), pods, &idle(4), Criticality::Standard));
    let mut loads = idle(4);
    loads[first].utilization = Some(0.95);
    assert_ne!(
        pod_of(cfg.pick(Some(Prefix::from(h)), pods, &loads, Criticality::Standard)),
        first
    );
    // All saturated: sheddable is shed, the others queue on the least busy pod.
    let mut all = vec![
        PodLoad {
            in_flight: 9,
            utilization: None,
            queue: None
        };
        4
    ];
    all[2].in_flight = 8;
    assert_eq!(
        cfg.pick(Some(Prefix::from(h)), pods, &all, Criticality::Sheddable),
        Pick::Shed
    );
    for class in [Criticality::Standard, Criticality::Critical] {
        assert_eq!(
            cfg.pick(Some(Prefix::from(h)), pods, &all, class),
            Pick::Pod {
                index: 2,
                reason: PickReason::Queued
            }
        );
    }
}

#[test]
fn with_flow_control_all_saturated_holds_standard_and_sheddable_never_critical() {
    let cfg = config(r#", "saturation": {"in_flight": 2}, "flow": {}"#);
    let pods = &cfg.pools[0].pods;
    let mut loads = vec![
        PodLoad {
            in_flight: 2,
            utilization: None,
            queue: None
        };
        4
    ];
    assert!(!cfg.has_room(&loads));
    for class in [Criticality::Standard, Criticality::Sheddable] {
        assert_eq!(
            cfg.pick(Some(Prefix::from(7)), pods, &loads, class),
            Pick::Wait
        );
    }
    assert!(matches!(
        cfg.pick(Some(Prefix::from(7)), pods, &loads, Criticality::Critical),
        Pick::Pod {
            reason: PickReason::Queued,
            ..
        }
    ));
    // One pod gets room: the held request goes to it, whatever its prefix prefers.
    loads[3].in_flight = 1;
    assert!(cfg.has_room(&loads));
    for h in 0..20 {
        assert_eq!(
            pod_of(cfg.pick(Some(Prefix::from(h)), pods, &loads, Criticality::Sheddable)),
            3
        );
    }
    // No pods at all: the fallback policy, as without flow control.
    assert_eq!(cfg.pick(None, &[], &[], Criticality::Standard), Pick::None);
}

#[test]
fn held_requests_are_released_best_first_to_pods_with_room_and_counted_in_flight() {
    use crate::flow::{Entry, FlowQueue, Push};
    let cfg = config(r#", "saturation": {"in_flight": 1}, "flow": {}"#);
    let mut members = Members::new(&cfg.pools[0]);
    for l in &mut members.loads {
        l.in_flight = 1;
    }
    let mut q = FlowQueue::default();
    let fc = cfg.flow.as_ref().unwrap();
    let held = [
        (1, Criticality::Sheddable, "a"),
        (2, Criticality::Standard, "a"),
        (3, Criticality::Standard, "a"),
        (4, Criticality::Standard, "b"),
    ];
    for (id, class, tenant) in held {
        let e = Entry {
            id,
            class,
            tenant: tenant.into(),
            bytes: 0,
            since_ms: 0,
        };
        assert_eq!(q.push(fc, e), Push::Held);
    }
    let mut out = Vec::new();
    cfg.release(&mut q, &mut members, |_| Some(Prefix::from(9)), 0, &mut out);
    assert!(out.is_empty(), "every pod saturated");
    // Two pods get room: the two best go (standard, tenants in turn), one to each pod.
    members.loads[1].in_flight = 0;
    members.loads[3].in_flight = 0;
    cfg.release(&mut q, &mut members, |_| Some(Prefix::from(9)), 0, &mut out);
    let ids: Vec<u32> = out.iter().map(|(e, _, _)| e.id).collect();
    let mut pods: Vec<usize> = out.iter().map(|(_, p, _)| *p).collect();
    pods.sort();
    assert_eq!((ids, pods), (vec![2, 4], vec![1, 3]));
    assert!(!cfg.has_room(&members.loads), "counted in flight");
    assert_eq!(q.len(), 2);
}

#[test]
fn without_a_prefix_the_least_busy_pod_wins() {
    let cfg = config("");
    let pods = &cfg.pools[0].pods;
    let loads = [3, 1, 0, 2].map(|n| PodLoad {
        in_flight: n,
        utilization: None,
        queue: None,
    });
    assert_eq!(
        cfg.pick(None, pods, &loads, Criticality::Standard),
        Pick::Pod {
            index: 2,
            reason: PickReason::LeastLoaded
        }
    );
    assert_eq!(cfg.pick(None, &[], &[], Criticality::Standard), Pick::None);
}

#[test]
fn config_errors_name_the_field() {
    let err = |json: &str| PickerConfig::parse(json.as_bytes()).unwrap_err().field;
    assert_eq!(err(r#"{"pools": {}}"#), "pools");
    assert_eq!(err(r#"{"pools": {"m": ["pod-a:80"]}}"#), "pools.m");
    assert_eq!(
        err(r#"{"pools": {"m": ["1.2.3.4:80", "1.2.3.4:80"]}}"#),
        "pools.m"
    );
    let one = r#"{"pools": {"m": ["1.2.3.4:80"]}"#;
    assert_eq!(
        err(&format!(r#"{one}, "cold_prefill_per_kb": -1}}"#)),
        "cold_prefill_per_kb"
    );
    // The old absolute knob is gone, and named as unknown.
    assert_eq!(err(&format!(r#"{one}, "spill_slack": 4}}"#)), "spill_slack");
    assert_eq!(err(&format!(r#"{one}, "capacity": 0}}"#)), "capacity");
    assert_eq!(
        err(&format!(r#"{one}, "saturation": {{"in_flight": 0}}}}"#)),
        "saturation.in_flight"
    );
    assert_eq!(
        err(&format!(r#"{one}, "saturation": {{"utilization": 0}}}}"#)),
        "saturation.utilization"
    );
    assert_eq!(
        err(&format!(r#"{one}, "report_ttl": "soon"}}"#)),
        "report_ttl"
    );
    assert_eq!(err(&format!(r#"{one}, "tick": "0ms"}}"#)), "tick");
    assert_eq!(
        err(&format!(r#"{one}, "clusters": {{"x": "c"}}}}"#)),
        "clusters.x"
    );
    let named =
        PickerConfig::parse(br#"{"pools": {"m": []}, "clusters": {"m": "outbound|8000||m"}}"#)
            .unwrap();
    assert_eq!(named.pools[0].cluster, "outbound|8000||m");
    assert_eq!(config("").pools[0].cluster, "m");
    assert_eq!(
        err(&format!(r#"{one}, "forget_after": "x"}}"#)),
        "forget_after"
    );
    assert_eq!(err(&format!(r#"{one}, "colour": 1}}"#)), "colour");
    // The flow block is the sidecar's, validated the same way; its pod-capacity knobs are
    // the sidecar's alone (room at the gateway is the saturation filter).
    assert_eq!(
        err(&format!(
            r#"{one}, "flow": {{"standard": {{"ttl": "0s"}}}}}}"#
        )),
        "flow.standard.ttl"
    );
    assert_eq!(
        err(&format!(r#"{one}, "flow": {{"bogus": 1}}}}"#)),
        "flow.bogus"
    );
    assert_eq!(
        err(&format!(r#"{one}, "flow": {{"max_running": 4}}}}"#)),
        "flow.max_running"
    );
    assert_eq!(
        err(&format!(r#"{one}, "flow": {{"target_queue": 0}}}}"#)),
        "flow.target_queue"
    );
    assert_eq!(
        err(&format!(r#"{one}, "flow": {{"max_tenant_labels": 4}}}}"#)),
        "flow.max_tenant_labels"
    );
    assert!(config("").flow.is_none());
    assert!(config(r#", "flow": {"enabled": false}"#).flow.is_none());
    let f = config(r#", "flow": {"sheddable": {"ttl": "3s"}}"#)
        .flow
        .unwrap();
    assert_eq!(f.bands[1].ttl_ms, 3000);
}

#[test]
fn prefix_hash_header_parses_hex_only() {
    assert_eq!(parse_prefix_hash(b"00000000000000ff"), Some(255));
    assert_eq!(parse_prefix_hash(b"ffffffffffffffff"), Some(u64::MAX));
    assert_eq!(parse_prefix_hash(b""), None);
    assert_eq!(parse_prefix_hash(b"xyz"), None);
    assert_eq!(parse_prefix_hash(b"00000000000000000"), None);
}

#[test]
fn reports_add_pods_and_silent_discovered_pods_are_forgotten() {
    let cfg = PickerConfig::parse(
        br#"{"pools": {"m": ["10.0.0.1:80"]}, "report_ttl": "2s", "forget_after": "10s"}"#,
    )
    .unwrap();
    let mut m = Members::new(&cfg.pools[0]);
    m.report("10.0.0.2:80", &util(0.5, 1_000));
    m.report("not-an-address", &util(0.5, 1_000));
    m.report("10.0.0.1:80", &util(0.25, 1_000));
    assert_eq!(m.pods.len(), 2);
    assert_eq!(m.loads[1].utilization, Some(0.5));
    // An older report does not overwrite a newer one.
    m.report("10.0.0.2:80", &util(0.9, 500));
    assert_eq!(m.loads[1].utilization, Some(0.5));
    // Stale after the TTL: the load is unknown, the pod stays.
    m.age(3_500, &cfg);
    assert_eq!(m.loads[0].utilization, None);
    assert_eq!(m.loads[1].utilization, None);
    assert_eq!(m.pods.len(), 2);
    // Silent past forget_after: the discovered pod goes unless requests are in flight to it;
    // the configured pod stays.
    m.loads[1].in_flight = 1;
    m.age(20_000, &cfg);
    assert_eq!(m.pods.len(), 2);
    let key = m.pods[1].key();
    assert_eq!(m.index_of(key), Some(1));
    m.loads[1].in_flight = 0;
    m.age(20_000, &cfg);
    assert_eq!(m.pods.len(), 1);
    assert_eq!(m.index_of(key), None);
    // A pool may start empty and learn all its pods.
    let empty = PickerConfig::parse(br#"{"pools": {"m": []}}"#).unwrap();
    let mut m = Members::new(&empty.pools[0]);
    assert_eq!(
        empty.pick(
            Some(Prefix::from(1)),
            &m.pods,
            &m.loads,
            Criticality::Standard
        ),
        Pick::None
    );
    m.report("10.0.0.9:80", &util(0.1, 1));
    assert_eq!(
        empty.pick(
            Some(Prefix::from(1)),
            &m.pods,
            &m.loads,
            Criticality::Standard
        ),
        Pick::Pod {
            index: 0,
            reason: PickReason::Affinity
        }
    );
}

#[test]
fn spills_return_to_the_pod_that_got_the_prefix_until_it_goes_cold() {
    // 4 KB at 1 request per KB: a cold prefill costs 4 requests of queue.
    let cfg = config(r#", "cold_prefill_per_kb": 1"#);
    let mut m = Members::new(&cfg.pools[0]);
    let h = 21;
    let home = pod_of(m.pick(&cfg, sized(h, 4), Criticality::Standard, 0));
    m.loads[home].in_flight = 10;
    let Pick::Pod {
        index: spill,
        reason: PickReason::Spill,
    } = m.pick(&cfg, sized(h, 4), Criticality::Standard, 1_000)
    else {
        panic!("expected a spill")
    };
    // The spill pod now holds the prefix: 3 requests there beat a cold prefill on an idle pod.
    m.loads[spill].in_flight = 3;
    assert_eq!(
        m.pick(&cfg, sized(h, 4), Criticality::Standard, 2_000),
        Pick::Pod {
            index: spill,
            reason: PickReason::Spill
        }
    );
    // Past WARM_MS without a request it is cold again: the idle pods win.
    let later = 2_000 + WARM_MS + 1;
    let p = pod_of(m.pick(&cfg, sized(h, 4), Criticality::Standard, later));
    assert!(p != spill && p != home, "{p}");
    // Another replica that never saw the prefix still sends it home while home is idle.
    let mut fresh = Members::new(&cfg.pools[0]);
    assert_eq!(
        pod_of(fresh.pick(&cfg, sized(h, 4), Criticality::Standard, later)),
        home
    );
}

#[test]
fn the_warm_index_keeps_the_latest_pods_of_each_prefix() {
    let mut w = WarmIndex::default();
    assert_eq!(w.pods(5, 0), [0; WARM_PODS]);
    for (key, at) in [(11, 1), (12, 2), (13, 3), (14, 4)] {
        w.note(5, key, at);
    }
    // A fifth pod replaces the least recent; a repeat refreshes in place.
    w.note(5, 11, 5);
    w.note(5, 15, 6);
    let mut pods = w.pods(5, 6);
    pods.sort();
    assert_eq!(pods, [11, 13, 14, 15]);
    // Another prefix has its own pods.
    assert_eq!(w.pods(6, 6), [0; WARM_PODS]);
}

#[test]
fn a_reported_queue_is_the_busyness_not_kv_cache_use() {
    let cfg = config(r#", "capacity": 32"#);
    // KV-cache use 0.25 (two long prompts running) would read as 8 requests; the queue
    // in the same report says 2.
    let mut m = Members::new(&cfg.pools[0]);
    let mut r = util(0.25, 1_000);
    assert_eq!(
        cfg.busyness(&{
            m.report("10.0.0.1:8000", &r);
            m.loads[0]
        }),
        8.0
    );
    r.queue = Some(2.0);
    r.at_ms = 1_100;
    m.report("10.0.0.1:8000", &r);
    assert_eq!(cfg.busyness(&m.loads[0]), 2.0);
    // This gateway's own count still wins when higher; a stale report is dropped whole.
    m.loads[0].in_flight = 5;
    assert_eq!(cfg.busyness(&m.loads[0]), 5.0);
    m.age(1_100 + cfg.report_ttl_ms + 1, &cfg);
    assert_eq!((m.loads[0].utilization, m.loads[0].queue), (None, None));
}
