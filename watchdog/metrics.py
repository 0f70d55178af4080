"""The daemon's own metrics (docs/metrics.md). Names and labels are a contract."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watchdog import __version__
from watchdog.accesslog_metrics import AccessLogCollector

# From about one scrape interval to the slowest source timeout.
EVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROUTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Odoo answers from a few ms (static, health) to many seconds (reports, imports).
# A gate takes milliseconds, a backup or a migration of a large database an hour.
STEP_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
                3600.0, 7200.0)
# The state store's operations (store.py): writes of a decision, of an audit line, of the rule
# and alert memory, the retry of what waits in memory; reads of a state or memory, of events;
# the per-tick history of a rollout (the web page's charts).
STORE_OPS = ("save", "record", "memory", "flush", "load", "read", "history", "lease")
HTTP_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)


class Metrics:
    """One registry per daemon (tests run several daemons in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.build_info = Gauge("odoo_watchdog_build_info", "Build of odoo-watchdog",
                                ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.traffic_weight = Gauge("odoo_watchdog_traffic_weight",
                                    "Desired share of traffic per colour, percent",
                                    ["site", "color"], registry=r)
        self.rollout_phase = Gauge("odoo_watchdog_rollout_phase",
                                   "1 on the site's current rollout phase", ["site", "phase"],
                                   registry=r)
        self.rollout_step = Gauge("odoo_watchdog_rollout_step",
                                  "Current step of the rollout, 1-based; 0 when none",
                                  ["site"], registry=r)
        self.rollouts_total = Counter("odoo_watchdog_rollouts_total", "Finished rollouts",
                                      ["site", "outcome"], registry=r)
        self.rollbacks_total = Counter("odoo_watchdog_rollbacks_total",
                                       "Rollbacks and failbacks by the rule that caused them",
                                       ["site", "rule"], registry=r)
        self.rule_value = Gauge("odoo_watchdog_rule_value", "Last measured value of a rule",
                                ["site", "rule", "color"], registry=r)
        # Rules that compare two colours (source: traffic): each colour's requests in the
        # window (color: whose requests), and a judge's one-sided p-value (color: the target).
        self.rule_samples = Gauge("odoo_watchdog_rule_samples",
                                  "Requests in a traffic rule's window, per colour read",
                                  ["site", "rule", "color"], registry=r)
        self.rule_p_value = Gauge("odoo_watchdog_rule_p_value",
                                  "A judge rule's one-sided p-value (candidate worse than live)",
                                  ["site", "rule", "color"], registry=r)
        self.rule_state = Gauge("odoo_watchdog_rule_state",
                                "0 ok, 1 pending, 2 firing, 3 holding",
                                ["site", "rule", "color"], registry=r)
        self.rule_evaluations_total = Counter("odoo_watchdog_rule_evaluations_total",
                                              "Rule evaluations by result",
                                              ["site", "rule", "result"], registry=r)
        self.rule_evaluation_seconds = Histogram("odoo_watchdog_rule_evaluation_seconds",
                                                 "Time to measure one rule", ["source"],
                                                 buckets=EVAL_BUCKETS, registry=r)
        self.router_operations_total = Counter("odoo_watchdog_router_operations_total",
                                               "Router reads and writes by result",
                                               ["site", "router", "result"], registry=r)
        self.router_operation_seconds = Histogram("odoo_watchdog_router_operation_seconds",
                                                  "Time of one router operation", ["router"],
                                                  buckets=ROUTER_BUCKETS, registry=r)
        self.router_drift_total = Counter("odoo_watchdog_router_drift_total",
                                          "Times the router's split differed from the desired "
                                          "one and was put back", ["site"], registry=r)
        # Several proxy nodes in front of one site (router `sockets`, DESIGN.md §15).
        self.router_node_up = Gauge(
            "odoo_watchdog_router_node_up",
            "1 when the proxy node answered and has the stored split, 0 when it does not",
            ["site", "node"], registry=r)
        self.router_node_weight = Gauge(
            "odoo_watchdog_router_node_weight",
            "The split the proxy node reports, percent; absent while it does not answer",
            ["site", "node", "color"], registry=r)
        self.alerts_received_total = Counter("odoo_watchdog_alerts_received_total",
                                             "Alertmanager alerts received", ["status"],
                                             registry=r)
        self.config_last_reload_successful = Gauge(
            "odoo_watchdog_config_last_reload_successful",
            "1 if the last config and rule load succeeded", registry=r)
        self.config_last_reload_success_timestamp_seconds = Gauge(
            "odoo_watchdog_config_last_reload_success_timestamp_seconds",
            "Time of the last successful config and rule load", registry=r)
        # The preparing phase (DESIGN.md section 12).
        self.prepare_step_seconds = Histogram("odoo_watchdog_prepare_step_seconds",
                                              "Time of one prepare step, by outcome",
                                              ["site", "step", "outcome"], buckets=STEP_BUCKETS,
                                              registry=r)
        self.backup_last_success_timestamp_seconds = Gauge(
            "odoo_watchdog_backup_last_success_timestamp_seconds",
            "End of the site's last verified backup", ["site"], registry=r)
        self.backup_bytes = Gauge("odoo_watchdog_backup_bytes",
                                  "Size of the site's last verified backup (dump and filestore)",
                                  ["site"], registry=r)
        self.migration_blocked_seconds = Gauge(
            "odoo_watchdog_migration_blocked_seconds",
            "How long the running migration has waited on a lock another session holds; 0 "
            "when it does not wait", ["site"], registry=r)
        self.sessions_shared = Gauge(
            "odoo_watchdog_sessions_shared",
            "1 when the last sessions smoke check found a session of the live colour valid on "
            "the candidate, 0 when not", ["site"], registry=r)
        self.store_errors_total = Counter(
            "odoo_watchdog_store_errors_total",
            "Operations the state store failed, by operation", ["op"], registry=r)
        for op in STORE_OPS:
            self.store_errors_total.labels(op)
        # Several daemons on one PostgreSQL store (DESIGN.md §15).
        self.site_owned = Gauge(
            "odoo_watchdog_site_owned",
            "1 while this daemon holds the site's lease (it alone may decide and touch the "
            "router), 0 when another daemon or none does", ["site"], registry=r)
        self.lease_epoch = Gauge(
            "odoo_watchdog_lease_epoch",
            "The epoch of the site's lease this daemon holds (each takeover adds one)",
            ["site"], registry=r)
        self.lease_changes_total = Counter(
            "odoo_watchdog_lease_changes_total",
            "Leases this daemon took or gave up, by event (acquired, released, lost, refused)",
            ["site", "event"], registry=r)
        self.daemons_up = Gauge(
            "odoo_watchdog_daemons_up",
            "Daemons whose heartbeat in the shared store is current (1 with SQLite)",
            registry=r)
        # odoo_watchdog_http_requests_total{site,color,code},
        # odoo_watchdog_http_request_duration_seconds{site,color} (HTTP_BUCKETS) and the
        # access-log receiver's own counts: read from its plain counters at scrape time.
        self.access_log = AccessLogCollector(HTTP_BUCKETS)
        r.register(self.access_log)
