//! The daemon's OpenMetrics registry (`GET /metrics`).
//!
//! One explicit [`Registry`] (no global state), every family prefixed `headcni_`, units in the
//! names and `_total` on counters as the Prometheus naming conventions ask:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `headcni_build_info` | info | `version` |
//! | `headcni_cni_operations_total` | counter | `verb`, `result` (`ok`/`error`) |
//! | `headcni_cni_operation_duration_seconds` | histogram (0.5 ms … 1 s) | `verb` |
//! | `headcni_plugin_events_total` | counter | `result` (`accepted`/`malformed`) |
//! | `headcni_ipam_allocated_addresses` | gauge | `range` |
//! | `headcni_ipam_free_addresses` | gauge | `range` |
//! | `headcni_control_plane_requests_total` | counter | `endpoint`, `result` |
//! | `headcni_control_plane_errors_total` | counter | `endpoint` |
//! | `headcni_route_state` | gauge 0/1 | `route`, `state` (`advertised`/`approved`/`primary`) |
//! | `headcni_reconcile_duration_seconds` | histogram (1 ms … 30 s) | `step` |
//! | `headcni_reconcile_errors_total` | counter | `step` |
//! | `headcni_pods` | gauge | — |
//! | `headcni_ready` | gauge 0/1 | — |
//!
//! Label values come from the daemon itself (verbs are checked against
//! [`headcni_core::events::VERBS`] before they get here), so cardinality stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Bucket upper bounds of `headcni_cni_operation_duration_seconds`: 0.5 ms to 1 s.
pub const CNI_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Bucket upper bounds of `headcni_reconcile_duration_seconds`: 1 ms to 30 s (a reconcile step
/// may include the bounded wait for a route approval).
pub const RECONCILE_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbResult {
    verb: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RangeLabel {
    range: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointResult {
    endpoint: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn cni_histogram() -> Histogram {
    Histogram::new(CNI_BUCKETS)
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

fn result(ok: bool) -> String {
    if ok { "ok" } else { "error" }.to_owned()
}

/// Saturating `u64` → `i64` for gauges.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Finite, non-negative seconds (a clock step backwards must not corrupt a histogram sum).
fn seconds(s: f64) -> f64 {
    if s.is_finite() && s > 0.0 { s } else { 0.0 }
}

/// The daemon's metrics: an explicit registry and its families. Cheap to share behind an
/// `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cni_ops: Family<VerbResult, Counter>,
    cni_duration: HistogramFamily<VerbLabel>,
    plugin_events: Family<ResultLabel, Counter>,
    ipam_allocated: Family<RangeLabel, Gauge>,
    ipam_free: Family<RangeLabel, Gauge>,
    control_requests: Family<EndpointResult, Counter>,
    control_errors: Family<EndpointLabel, Counter>,
    route_state: Family<RouteLabel, Gauge>,
    reconcile_duration: HistogramFamily<StepLabel>,
    reconcile_errors: Family<StepLabel, Counter>,
    pods: Gauge,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every HeadCNI family registered (and `headcni_build_info` set).
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("headcni");
        r.register(
            "build",
            "HeadCNI build information",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        let cni_ops = Family::<VerbResult, Counter>::default();
        r.register(
            "cni_operations",
            "CNI plugin operations reported by the plugin, by verb and result",
            cni_ops.clone(),
        );
        let cni_duration: HistogramFamily<VerbLabel> =
            Family::new_with_constructor(cni_histogram as fn() -> Histogram);
        r.register_with_unit(
            "cni_operation_duration",
            "Duration of CNI plugin operations, by verb",
            Unit::Seconds,
            cni_duration.clone(),
        );
        let plugin_events = Family::<ResultLabel, Counter>::default();
        r.register(
            "plugin_events",
            "Datagrams received on the plugin event socket, accepted or malformed",
            plugin_events.clone(),
        );
        let ipam_allocated = Family::<RangeLabel, Gauge>::default();
        r.register(
            "ipam_allocated_addresses",
            "Addresses reserved in an IPAM range",
            ipam_allocated.clone(),
        );
        let ipam_free = Family::<RangeLabel, Gauge>::default();
        r.register(
            "ipam_free_addresses",
            "Addresses still free in an IPAM range",
            ipam_free.clone(),
        );
        let control_requests = Family::<EndpointResult, Counter>::default();
        r.register(
            "control_plane_requests",
            "Requests to the control plane (Headscale API, tailscaled LocalAPI), by endpoint and result",
            control_requests.clone(),
        );
        let control_errors = Family::<EndpointLabel, Counter>::default();
        r.register(
            "control_plane_errors",
            "Failed requests to the control plane, by endpoint",
            control_errors.clone(),
        );
        let route_state = Family::<RouteLabel, Gauge>::default();
        r.register(
            "route_state",
            "1 when this node's route is in the given state (advertised, approved, primary)",
            route_state.clone(),
        );
        let reconcile_duration: HistogramFamily<StepLabel> =
            Family::new_with_constructor(reconcile_histogram as fn() -> Histogram);
        r.register_with_unit(
            "reconcile_duration",
            "Duration of the daemon's reconcile steps",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<StepLabel, Counter>::default();
        r.register(
            "reconcile_errors",
            "Failed reconcile steps",
            reconcile_errors.clone(),
        );
        let pods = Gauge::default();
        r.register(
            "pods",
            "Pod attachments on this node known to the daemon",
            pods.clone(),
        );
        let ready = Gauge::default();
        r.register("ready", "1 when the node is ready (/readyz)", ready.clone());
        Metrics {
            registry: root,
            cni_ops,
            cni_duration,
            plugin_events,
            ipam_allocated,
            ipam_free,
            control_requests,
            control_errors,
            route_state,
            reconcile_duration,
            reconcile_errors,
            pods,
            ready,
        }
    }

    /// Counts one CNI operation and observes its duration.
    pub fn record_cni(&self, verb: &str, ok: bool, seconds_taken: f64) {
        self.cni_ops
            .get_or_create(&VerbResult {
                verb: verb.to_owned(),
                result: result(ok),
            })
            .inc();
        self.cni_duration
            .get_or_create(&VerbLabel {
                verb: verb.to_owned(),
            })
            .observe(seconds(seconds_taken));
    }

    /// Counts one datagram on the plugin event socket (`accepted` or `malformed`).
    pub fn record_plugin_event(&self, well_formed: bool) {
        let result = if well_formed { "accepted" } else { "malformed" };
        self.plugin_events
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Sets the allocated and free address counts of one IPAM range (e.g. `10.244.1.0/24`).
    pub fn set_ipam(&self, range: &str, allocated: u64, free: u64) {
        let l = RangeLabel {
            range: range.to_owned(),
        };
        self.ipam_allocated
            .get_or_create(&l)
            .set(gauge_value(allocated));
        self.ipam_free.get_or_create(&l).set(gauge_value(free));
    }

    /// Counts one control-plane request; failures also count in the errors family.
    pub fn record_control(&self, endpoint: &str, ok: bool) {
        self.control_requests
            .get_or_create(&EndpointResult {
                endpoint: endpoint.to_owned(),
                result: result(ok),
            })
            .inc();
        let errors = self.control_errors.get_or_create(&EndpointLabel {
            endpoint: endpoint.to_owned(),
        });
        if !ok {
            errors.inc();
        }
    }

    /// Sets the three state gauges of one route of this node.
    pub fn set_route(&self, route: &str, advertised: bool, approved: bool, primary: bool) {
        for (state, on) in [
            ("advertised", advertised),
            ("approved", approved),
            ("primary", primary),
        ] {
            self.route_state
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                    state: state.to_owned(),
                })
                .set(i64::from(on));
        }
    }

    /// Forgets every route's state series (call before re-setting them after a PodCIDR change,
    /// so that a route HeadCNI no longer manages does not linger).
    pub fn clear_routes(&self) {
        self.route_state.clear();
    }

    /// Observes one reconcile step's duration; a failed step also counts as an error.
    pub fn observe_reconcile(&self, step: &str, seconds_taken: f64, ok: bool) {
        let l = StepLabel {
            step: step.to_owned(),
        };
        self.reconcile_duration
            .get_or_create(&l)
            .observe(seconds(seconds_taken));
        let errors = self.reconcile_errors.get_or_create(&l);
        if !ok {
            errors.inc();
        }
    }

    /// Sets the number of pod attachments on this node.
    pub fn set_pods(&self, n: u64) {
        self.pods.set(gauge_value(n));
    }

    /// Sets `headcni_ready` (1 ready, 0 not ready).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an error here would be a bug in the encoder, and
        // a partial exposition is still better than none.
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_values() {
        let m = Metrics::new();
        m.record_cni("ADD", true, 0.002);
        m.record_cni("ADD", false, 0.3);
        m.record_cni("DEL", true, f64::NAN);
        m.record_plugin_event(false);
        m.set_ipam("10.244.1.0/24", 3, 250);
        m.record_control("headscale/approve_routes", false);
        m.record_control("localapi/prefs", true);
        m.set_route("10.244.1.0/24", true, true, false);
        m.observe_reconcile("routes", 0.2, false);
        m.set_pods(3);
        m.set_ready(true);
        let text = m.encode();
        for line in [
            "headcni_build_info{version=\"",
            "headcni_cni_operations_total{verb=\"ADD\",result=\"ok\"} 1",
            "headcni_cni_operations_total{verb=\"ADD\",result=\"error\"} 1",
            "headcni_cni_operation_duration_seconds_bucket{le=\"0.0025\",verb=\"ADD\"} 1",
            "headcni_cni_operation_duration_seconds_count{verb=\"DEL\"} 1",
            "headcni_plugin_events_total{result=\"malformed\"} 1",
            "headcni_ipam_allocated_addresses{range=\"10.244.1.0/24\"} 3",
            "headcni_ipam_free_addresses{range=\"10.244.1.0/24\"} 250",
            "headcni_control_plane_requests_total{endpoint=\"headscale/approve_routes\",result=\"error\"} 1",
            "headcni_control_plane_errors_total{endpoint=\"headscale/approve_routes\"} 1",
            "headcni_control_plane_errors_total{endpoint=\"localapi/prefs\"} 0",
            "headcni_route_state{route=\"10.244.1.0/24\",state=\"approved\"} 1",
            "headcni_route_state{route=\"10.244.1.0/24\",state=\"primary\"} 0",
            "headcni_reconcile_errors_total{step=\"routes\"} 1",
            "headcni_pods 3",
            "headcni_ready 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# UNIT headcni_cni_operation_duration_seconds seconds"));
        assert!(text.ends_with("# EOF\n"));
        m.clear_routes();
        assert!(!m.encode().contains("headcni_route_state{"));
    }

    #[test]
    fn gauge_saturates() {
        assert_eq!(gauge_value(u64::MAX), i64::MAX);
        assert_eq!(seconds(-1.0), 0.0);
        assert_eq!(seconds(f64::INFINITY), 0.0);
    }
}
