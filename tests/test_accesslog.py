"""The access-log receiver without a proxy: framing, both parsers, mapping, the export.

The samples are real: HAProxy 2.6 and nginx 1.22 from the lab sent them over UDP (HAProxy in
each of its syslog formats, nginx with and without `nohostname`, in the project's
`log_format odoo_watchdog` from deploy/nginx/access-log.conf).

One module over 400 lines, on purpose: framing, parsing, mapping and export are tested with
the same real samples, and a datagram goes through all four in every receiver test.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from structlog.testing import capture_logs

from tests.accesslog_helpers import (
    family_samples,
    kernel_drops_counted,
    lines_counted,
    send,
    settle,
)
from watchdog import accesslog
from watchdog.accesslog import (
    AccessLine,
    AccessLogReceiver,
    parse_haproxy,
    parse_nginx,
    routes_from_config,
    syslog_message,
)
from watchdog.accesslog_metrics import AccessLogCollector
from watchdog.config import DaemonConfig
from watchdog.lab.procs import free_udp_port
from watchdog.metrics import HTTP_BUCKETS, Metrics

# ---------------------------------------------------------------- real samples

HAPROXY_MSG = (b'127.0.0.1:44118 [27/Nov/2026:10:21:24.168] odoo odoo/odoo-green 0/0/0/51/51 '
               b'200 1863 - - --NI 1/1/0/0/0 0/0 "GET /web/login HTTP/1.1"')
# HAProxy's default: RFC 3164 without a host name.
HAPROXY_3164 = b"<134>Nov 27 10:21:24 haproxy[15755]: " + HAPROXY_MSG + b"\n"
# `log-send-hostname myhost`
HAPROXY_3164_HOST = b"<134>Nov 27 10:21:24 myhost haproxy[15755]: " + HAPROXY_MSG + b"\n"
# `format rfc5424`
HAPROXY_5424 = (b"<134>1 2026-11-27T10:23:42.029334+00:00 myhost haproxy 17456 - - "
                + HAPROXY_MSG + b"\n")
HAPROXY_SHORT = b"<6>" + HAPROXY_MSG + b"\n"  # `format short`
HAPROXY_RAW = HAPROXY_MSG + b"\n"  # `format raw`
# `timeout server 400ms` expired: 504, Tr = -1, Ta = 402 ms.
HAPROXY_TIMEOUT = (b"<134>Nov 27 10:23:42 haproxy[17456]: 127.0.0.1:45294 "
                   b"[27/Nov/2026:10:23:41.627] odoo odoo/odoo-blue 0/0/0/-1/402 504 198 - - "
                   b'sH-- 1/1/0/0/0 0/0 "GET /web/health HTTP/1.1"\n')
# The client went away during the wait (`option abortonclose`): Tr = -1.
HAPROXY_CLIENT_ABORT = (b'<134>Nov 27 10:23:42 haproxy[17456]: 127.0.0.1:45308 '
                        b'[27/Nov/2026:10:23:42.031] odoo odoo/odoo-blue 0/0/0/-1/50 400 206 - - '
                        b'CH-- 1/1/0/0/0 0/0 "GET /web/login HTTP/1.1"\n')
# A TCP connect without a request (a port probe): no server.
HAPROXY_BADREQ = (b'<134>Nov 27 10:21:24 haproxy[15755]: 127.0.0.1:44112 [27/Nov/2026:10:21:24.166]'
                  b' odoo odoo/<NOSRV> -1/-1/-1/-1/0 400 0 - - CR-- 2/2/0/0/0 0/0 "<BADREQ>"\n')
# HAProxy's own messages arrive on the same log target.
HAPROXY_SERVER_DOWN = (b"<129>Nov 27 10:23:21 haproxy[17415]: Server odoo/odoo-blue is DOWN, "
                       b"reason: Layer7 timeout, check duration: 1001ms. 1 active and 0 backup "
                       b"servers left. 1 sessions active, 0 requeued, 0 remaining in queue.\n")

NGINX_MSG = (b'127.0.0.1 [27/Nov/2026:10:25:20 +0000] 200 0.055 "127.0.0.1:45327" "200" "0.055" '
             b'1452 "GET /web/login HTTP/1.1" "-" "Python-urllib/3.11"')
NGINX_3164 = b"<190>Nov 27 10:25:20 vm nginx: " + NGINX_MSG
NGINX_NOHOSTNAME = b"<190>Nov 27 10:25:20 nginx: " + NGINX_MSG
# The first server refused the connection; nginx tried the next one.
NGINX_RETRY = (b'<190>Nov 27 10:25:20 vm nginx: 127.0.0.1 [27/Nov/2026:10:25:20 +0000] 200 0.004 '
               b'"127.0.0.1:40527, 127.0.0.1:51457" "502, 200" "0.001, 0.003" 18 '
               b'"GET /web/health HTTP/1.1" "-" "Python-urllib/3.11"')
NGINX_QUOTE = (b'<190>Nov 27 10:25:20 vm nginx: 127.0.0.1 [27/Nov/2026:10:25:20 +0000] 404 0.001 '
               b'"127.0.0.1:51457" "404" "0.002" 14 "GET /a\\x22b HTTP/1.1" "-" "x\\x22y"')
# Served by nginx itself (a `return`, or the client left before an upstream was chosen).
NGINX_NO_UPSTREAM = (b'<190>Nov 27 10:25:20 vm nginx: 127.0.0.1 [27/Nov/2026:10:25:20 +0000] 499 '
                     b'0.000 "-" "-" "-" 0 "GET / HTTP/1.1" "-" "curl/7.88"')

# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("datagram", [
    HAPROXY_3164, HAPROXY_3164_HOST, HAPROXY_5424, HAPROXY_SHORT, HAPROXY_RAW,
], ids=["rfc3164-haproxy", "rfc3164-host", "rfc5424", "short", "raw"])
def test_every_haproxy_framing_gives_the_message(datagram: bytes) -> None:
    assert syslog_message(datagram) == HAPROXY_MSG


@pytest.mark.parametrize("datagram", [NGINX_3164, NGINX_NOHOSTNAME], ids=["host", "nohostname"])
def test_nginx_framing_gives_the_message(datagram: bytes) -> None:
    assert syslog_message(datagram) == NGINX_MSG


@pytest.mark.parametrize(("datagram", "message"), [
    (b"<13>Nov  7 01:02:03 host app[1]: hello world", b"hello world"),  # day below 10
    (b"<13>Nov 27 01:02:03 host app: a: b", b"a: b"),  # a colon in the message
    (b"<13>2026-11-27T10:00:00+00:00 host app[1]: hi", b"hi"),  # rsyslog's RFC 3339 stamp
    (b"<13>1 2026-11-27T10:00:00Z host app 1 ID47 - hi", b"hi"),
    (b"<13>1 2026-11-27T10:00:00Z host app 1 ID47 -", b""),  # no MSG
    (b'<13>1 2026-11-27T10:00:00Z h app - - [a@1 k="v"][b@2 x="y\\"] z"] msg', b"msg"),
    (b"<13>1 2026-11-27T10:00:00Z h app - - - \xef\xbb\xbfmsg", b"msg"),  # BOM
    (b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
     b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
     b"\xef\xbb\xbfAn application event log entry...",
     b"An application event log entry..."),  # RFC 5424's own example
])
def test_framing_details(datagram: bytes, message: bytes) -> None:
    assert syslog_message(datagram) == message


@pytest.mark.parametrize("garbage", [
    b"", b"<", b"<>", b"<999999>", b"<13>", b"<13>1", b"<13>1 x", b"\x00\xff\xfe",
    b"<13>Nov 27 01:02:03", b"<13>Nov 27 01:02:03 ", b"<ab>Nov 27 01:02:03 h t: m",
])
def test_framing_never_raises_on_garbage(garbage: bytes) -> None:
    assert isinstance(syslog_message(garbage), bytes)


# ---------------------------------------------------------------- parsers

PARSED = [
    (parse_haproxy, HAPROXY_MSG, AccessLine(b"odoo/odoo-green", b"200", 0.051)),
    # `timeout server` expired: Ta is used when Tr is -1
    (parse_haproxy, HAPROXY_TIMEOUT, AccessLine(b"odoo/odoo-blue", b"504", 0.402)),
    (parse_haproxy, HAPROXY_CLIENT_ABORT, AccessLine(b"odoo/odoo-blue", b"400", 0.05)),
    (parse_haproxy, b'127.0.0.9:34552 [15/Oct/2026:15:26:31.462] fe be/srv -1/-1/-1/-1/-1 -1 0 '
                    b'- - CD-- 2/2/2/0/0 0/0 ""', AccessLine(b"be/srv", b"-1", None)),
    # `option logasap` (+Ta, +bytes) and captured headers
    (parse_haproxy, b'127.0.0.9:1 [15/Oct/2026:15:26:31.462] fe~ be/srv 10/0/7/147/+723 200 +243 '
                    b'- - ---- 3/3/3/1/0 0/0 {1wt.eu} {} "GET /index.html HTTP/1.1"',
     AccessLine(b"be/srv", b"200", 0.723)),
    (parse_haproxy, HAPROXY_BADREQ, AccessLine(b"odoo/<NOSRV>", b"400", 0.0)),
    (parse_nginx, NGINX_MSG, AccessLine(b"127.0.0.1:45327", b"200", 0.055)),
    # a retry: the last upstream counts
    (parse_nginx, NGINX_RETRY, AccessLine(b"127.0.0.1:51457", b"200", 0.004)),
    (parse_nginx, NGINX_MSG.replace(b'"127.0.0.1:45327"',
                                    b'"127.0.0.1:1, 127.0.0.1:2 : 127.0.0.1:3"'),
     AccessLine(b"127.0.0.1:3", b"200", 0.055)),  # across upstream groups
    (parse_nginx, NGINX_QUOTE, AccessLine(b"127.0.0.1:51457", b"404", 0.001)),
    # nginx cuts long syslog messages: what follows $upstream_addr may be missing
    (parse_nginx, NGINX_MSG[:NGINX_MSG.index(b'"200"')],
     AccessLine(b"127.0.0.1:45327", b"200", 0.055)),
    (parse_nginx, NGINX_NO_UPSTREAM, AccessLine(b"-", b"499", 0.0)),
    (parse_nginx, NGINX_MSG.replace(b" 0.055 ", b" 2 "), AccessLine(b"127.0.0.1:45327", b"200",
                                                                      2.0)),  # whole seconds
]


@pytest.mark.parametrize(("parse", "line", "expected"), PARSED)
def test_parsers(parse: Callable[[bytes], AccessLine | None], line: bytes,
                 expected: AccessLine) -> None:
    """Each parser takes the bare message and the whole datagram alike: one parser serves the
    receiver's hot path (datagrams) and the callers of parse_haproxy / parse_nginx."""
    assert parse(syslog_message(line)) == expected
    assert parse(line) == expected


@pytest.mark.parametrize(("parse", "line"), [
    (parse_haproxy, syslog_message(HAPROXY_SERVER_DOWN)), (parse_haproxy, HAPROXY_SERVER_DOWN),
    (parse_haproxy, b"Proxy odoo stopped (cumulated conns: FE: 3, BE: 0)."),
    (parse_haproxy, NGINX_MSG), (parse_haproxy, b""), (parse_haproxy, b"garbage"),
    (parse_haproxy, HAPROXY_MSG[:60]),
    (parse_haproxy, HAPROXY_MSG.replace(b" 200 ", b" 20 ")),  # not a status
    (parse_nginx, HAPROXY_MSG), (parse_nginx, b""), (parse_nginx, b"garbage"),
    (parse_nginx, NGINX_MSG[:50]),
    (parse_nginx, NGINX_MSG.replace(b"0.055 ", b"- ")),  # no request time
    (parse_nginx, NGINX_MSG.replace(b"0.055 ", b"0. ")),
    # the combined format (the project's format is not combined)
    (parse_nginx, b'127.0.0.1 - - [27/Nov/2026:10:25:20 +0000] "GET / HTTP/1.1" 200 18 "-" "c"'),
])
def test_parsers_refuse_other_lines(parse: Callable[[bytes], AccessLine | None],
                                    line: bytes) -> None:
    assert parse(line) is None


# ---------------------------------------------------------------- config and mapping


def daemon_config(fmt: str = "haproxy", **extra: Any) -> DaemonConfig:
    if fmt == "haproxy":
        router: dict[str, Any] = {"kind": "haproxy", "socket": "/run/h.sock", "backend": "odoo"}
        blue, green = "odoo-blue", "odoo-green"
    else:
        router = {"kind": "nginx", "upstream_file": "/tmp/up.conf", "upstream": "odoo"}
        blue, green = "127.0.0.1:8069", "localhost:9069"
    return DaemonConfig.model_validate({
        "access_log": {"listen": f"127.0.0.1:{free_udp_port()}", "format": fmt},
        "sites": {"odoo": {"router": router, "colors": {
            "blue": {"server": blue, "url": "http://127.0.0.1:8069"},
            "green": {"server": green, "url": "http://127.0.0.1:9069"},
        }}},
        **extra,
    })


def test_routes_from_config() -> None:
    assert routes_from_config(daemon_config("haproxy"), "haproxy") == {
        "odoo/odoo-blue": ("odoo", "blue"), "odoo/odoo-green": ("odoo", "green")}
    assert routes_from_config(daemon_config("nginx"), "nginx") == {
        "127.0.0.1:8069": ("odoo", "blue"), "localhost:9069": ("odoo", "green")}


def test_from_config_without_access_log_is_none() -> None:
    config = daemon_config().model_copy(update={"access_log": None})
    assert AccessLogReceiver.from_config(config, Metrics()) is None


# ---------------------------------------------------------------- export


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def haproxy_receiver(metrics: Metrics) -> AccessLogReceiver:
    receiver = AccessLogReceiver.from_config(daemon_config("haproxy"), metrics)
    assert receiver is not None
    return receiver


def test_every_family_is_declared_before_any_line() -> None:
    text = generate_latest(Metrics().registry).decode()
    for name, kind in (("odoo_watchdog_http_requests_total", "counter"),
                       ("odoo_watchdog_http_request_duration_seconds", "histogram"),
                       ("odoo_watchdog_access_log_lines_total", "counter"),
                       ("odoo_watchdog_access_log_kernel_drops_total", "counter")):
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} {kind}\n" in text
    assert "odoo_watchdog_http_requests_total{" not in text  # no samples yet
    assert "odoo_watchdog_access_log_lines_total{" not in text  # no receiver yet


def test_the_collector_names_clash_like_any_other() -> None:
    """describe() gives the registry its names: a second one is refused, as a second Counter
    of the same name would be."""
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.registry.register(AccessLogCollector(HTTP_BUCKETS))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("odoo_watchdog_http_requests", "x", registry=metrics.registry)


def test_haproxy_lines_become_metrics() -> None:
    metrics = Metrics()
    receiver = haproxy_receiver(metrics)
    for datagram in (HAPROXY_3164, HAPROXY_5424, HAPROXY_TIMEOUT, HAPROXY_CLIENT_ABORT):
        receiver.handle(datagram, ("127.0.0.1", 1))
    green = {"site": "odoo", "color": "green"}
    blue = {"site": "odoo", "color": "blue"}
    assert sample(metrics, "odoo_watchdog_http_requests_total", code="200", **green) == 2
    assert sample(metrics, "odoo_watchdog_http_requests_total", code="504", **blue) == 1
    assert sample(metrics, "odoo_watchdog_http_requests_total", code="400", **blue) == 1
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_count", **green) == 2
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_sum", **green) == \
        pytest.approx(0.102)
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_bucket", le="0.05",
                  **green) == 0
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_bucket", le="0.1",
                  **green) == 2
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_bucket", le="0.5",
                  **blue) == 2
    assert (receiver.received, receiver.parsed, receiver.unparsed, receiver.unmapped) == \
        (4, 4, 0, 0)
    assert lines_counted(metrics.registry) == {"received": 4, "unparsed": 0, "unmapped": 0}


def test_haproxy_minus_one_status_is_499_and_minus_one_ta_observes_nothing() -> None:
    metrics = Metrics()
    receiver = haproxy_receiver(metrics)
    receiver.handle(b'<134>Nov 27 10:21:24 haproxy[1]: 127.0.0.9:3 [15/Oct/2026:15:26:31.462] fe '
                    b'odoo/odoo-blue 0/0/0/-1/-1 -1 0 - - CD-- 2/2/2/0/0 0/0 ""\n')
    receiver.handle(HAPROXY_TIMEOUT.replace(b" 504 ", b" 499 "))  # the same series as -1
    labels = {"site": "odoo", "color": "blue"}
    assert family_samples(metrics.registry, "odoo_watchdog_http_requests") == {
        ("odoo_watchdog_http_requests_total", (("code", "499"), ("color", "blue"),
                                               ("site", "odoo"))): 2}
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_count", **labels) == 1
    assert receiver.parsed == 2


def test_unknown_server_is_unmapped_and_sampled_once() -> None:
    metrics = Metrics()
    receiver = haproxy_receiver(metrics)
    other = HAPROXY_3164.replace(b"odoo/odoo-green", b"odoo/odoo-purple")
    with capture_logs() as logs:
        for _ in range(50):
            receiver.handle(other)
        receiver.handle(HAPROXY_BADREQ)  # no server: unmapped, but expected, so never sampled
        for own in (b"odoo/<PROMEX>", b"stats/<STATS>"):  # HAProxy answered them itself
            receiver.handle(HAPROXY_3164.replace(b"odoo/odoo-green", own))
    assert (receiver.parsed, receiver.unmapped, receiver.unparsed) == (0, 53, 0)
    unmapped = [e for e in logs if e["event"] == "access_log_unmapped"]
    assert len(unmapped) == 1
    assert "odoo/odoo-purple" in unmapped[0]["sample"]
    assert family_samples(metrics.registry, "odoo_watchdog_http_requests") == {}
    assert lines_counted(metrics.registry) == {"received": 53, "unparsed": 0, "unmapped": 53}


def test_unparsed_lines_are_counted_and_sampled_at_most_every_few_seconds() -> None:
    metrics = Metrics()
    receiver = haproxy_receiver(metrics)
    clock = [1000.0]
    receiver.clock = lambda: clock[0]
    with capture_logs() as logs:
        for _ in range(100):
            receiver.handle(HAPROXY_SERVER_DOWN)
        clock[0] += accesslog.SAMPLE_EVERY + 0.1
        receiver.handle(b"x" * 10_000)
        receiver.handle(b"y")
    samples = [e for e in logs if e["event"] == "access_log_unparsed"]
    assert [e["lines"] for e in samples] == [1, 100]  # the second counts those in between
    assert "is DOWN" in samples[0]["sample"]
    assert len(samples[1]["sample"]) <= accesslog.SAMPLE_CHARS + 3
    assert receiver.unparsed == 102
    assert receiver.received == 102
    assert lines_counted(metrics.registry) == {"received": 102, "unparsed": 102, "unmapped": 0}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.builds(lambda b: b"<134>" + b, st.binary(max_size=300)))
def test_garbage_never_raises(data: bytes) -> None:
    for fmt in ("haproxy", "nginx"):
        receiver = AccessLogReceiver("127.0.0.1:0", fmt, {}, Metrics())
        receiver.handle(data)
        assert receiver.received == 1
        assert receiver.parsed == 0


@given(st.text(max_size=200).map(lambda t: HAPROXY_3164.replace(b"/web/login", t.encode())))
@settings(max_examples=100, deadline=None)
def test_any_request_line_still_parses(data: bytes) -> None:
    receiver = haproxy_receiver(Metrics())
    receiver.handle(data)
    assert receiver.parsed == 1


def test_a_failure_inside_the_parser_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = haproxy_receiver(Metrics())

    def boom(data: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(receiver, "_fields", boom)
    with capture_logs() as logs:
        receiver.handle(HAPROXY_3164)
    assert (receiver.received, receiver.unparsed) == (1, 1)
    assert logs[0]["error"] == "RuntimeError('boom')"


@pytest.mark.parametrize("datagram", [
    HAPROXY_3164, HAPROXY_3164_HOST, HAPROXY_5424, HAPROXY_SHORT, HAPROXY_RAW,
    b'<134>1 2026-11-27T10:23:42Z h haproxy 1 - [x@1 a="b\\"]"] ' + HAPROXY_MSG,
], ids=["rfc3164-haproxy", "rfc3164-host", "rfc5424", "short", "raw", "rfc5424-sd"])
def test_the_receiver_takes_every_framing(datagram: bytes) -> None:
    metrics = Metrics()
    receiver = haproxy_receiver(metrics)
    receiver.handle(datagram)
    assert receiver.parsed == 1
    assert sample(metrics, "odoo_watchdog_http_requests_total", site="odoo", color="green",
                  code="200") == 1


@pytest.mark.parametrize("datagram", [NGINX_3164, NGINX_NOHOSTNAME, NGINX_MSG,
                                      b"<190>1 2026-11-27T10:25:20Z vm nginx - - - " + NGINX_MSG])
def test_the_nginx_receiver_takes_every_framing(datagram: bytes) -> None:
    metrics = Metrics()
    receiver = AccessLogReceiver("127.0.0.1:0", "nginx", {"127.0.0.1:45327": ("odoo", "blue")},
                                 metrics)
    receiver.handle(datagram)
    assert receiver.parsed == 1
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_sum", site="odoo",
                  color="blue") == pytest.approx(0.055)


async def test_nginx_over_udp_with_a_host_name_server() -> None:
    """The whole path: a UDP socket on the loop, nginx lines, `localhost:9069` resolved."""
    metrics = Metrics()
    receiver = AccessLogReceiver.from_config(daemon_config("nginx"), metrics)
    assert receiver is not None
    async with receiver:
        assert receiver.address[1] > 0
        retry_to_green = NGINX_RETRY.replace(b"127.0.0.1:51457", b"127.0.0.1:9069")
        to_blue = NGINX_3164.replace(b"127.0.0.1:45327", b"127.0.0.1:8069")
        await send(receiver, [retry_to_green, to_blue, to_blue, NGINX_NO_UPSTREAM, b"\xff" * 9])
        assert receiver.stats() == {"received": 5, "parsed": 3, "unparsed": 1, "unmapped": 1,
                                    "kernel_drops": 0}
        assert lines_counted(metrics.registry) == {"received": 5, "unparsed": 1, "unmapped": 1}
        assert kernel_drops_counted(metrics.registry) == 0
    assert receiver.kernel_drops() is None  # stopped
    assert sample(metrics, "odoo_watchdog_http_requests_total", site="odoo", color="green",
                  code="200") == 1
    assert sample(metrics, "odoo_watchdog_http_requests_total", site="odoo", color="blue",
                  code="200") == 2
    assert sample(metrics, "odoo_watchdog_http_request_duration_seconds_sum", site="odoo",
                  color="blue") == pytest.approx(0.11)


async def test_a_line_is_on_the_registry_as_soon_as_it_is_received() -> None:
    """No flush, no timer: the collector reads the receiver's counters at scrape time."""
    metrics = Metrics()
    receiver = AccessLogReceiver(f"127.0.0.1:{free_udp_port()}", "haproxy",
                                 {"odoo/odoo-green": ("odoo", "green")}, metrics)
    labels = {"site": "odoo", "color": "green", "code": "200"}
    async with receiver:
        for count in (1, 2, 3):
            await send(receiver, [HAPROXY_3164])
            assert sample(metrics, "odoo_watchdog_http_requests_total", **labels) == count
    assert sample(metrics, "odoo_watchdog_http_requests_total", **labels) == 3  # stopped


async def test_line_counts_and_kernel_drops_on_the_registry() -> None:
    """Real datagrams into a tiny socket buffer while the loop is busy: the kernel drops most
    of them, and the registry says so, with the receiver's counts of those that came in."""
    metrics = Metrics()
    receiver = AccessLogReceiver(f"127.0.0.1:{free_udp_port()}", "haproxy",
                                 {"odoo/odoo-green": ("odoo", "green")}, metrics, rcvbuf=4096)
    unknown = HAPROXY_3164.replace(b"odoo/odoo-green", b"odoo/odoo-purple")
    sent = 300
    async with receiver:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(sent):  # the loop does not run: nothing is read meanwhile
                sender.sendto(HAPROXY_SERVER_DOWN if i % 3 == 0 else
                              unknown if i % 3 == 1 else HAPROXY_3164, receiver.address)
        await settle(receiver, quiet=0.3)
        drops = receiver.kernel_drops()
        assert drops is not None and drops > 0, receiver.stats()
        assert receiver.received + drops == sent, receiver.stats()
        assert receiver.unparsed > 0 and receiver.unmapped > 0 and receiver.parsed > 0
        assert lines_counted(metrics.registry) == {
            "received": receiver.received, "unparsed": receiver.unparsed,
            "unmapped": receiver.unmapped}
        assert kernel_drops_counted(metrics.registry) == drops
        await send(receiver, [HAPROXY_3164])  # read at each scrape
        assert lines_counted(metrics.registry)["received"] == sent - drops + 1
    # stopped, and started again on a new socket: the counter does not go back
    assert kernel_drops_counted(metrics.registry) == drops
    async with receiver:
        await send(receiver, [HAPROXY_3164])
        assert kernel_drops_counted(metrics.registry) == drops
    assert lines_counted(metrics.registry)["received"] == sent - drops + 2


def test_two_receivers_on_one_registry_add_up() -> None:
    metrics = Metrics()
    first, second = haproxy_receiver(metrics), haproxy_receiver(metrics)
    first.handle(HAPROXY_3164)
    second.handle(HAPROXY_3164)
    second.handle(b"garbage")
    assert sample(metrics, "odoo_watchdog_http_requests_total", site="odoo", color="green",
                  code="200") == 2
    assert lines_counted(metrics.registry) == {"received": 3, "unparsed": 1, "unmapped": 0}
    assert kernel_drops_counted(metrics.registry) is None  # neither listens: unknown


async def test_start_fails_on_a_taken_port_and_stop_is_idempotent() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        receiver = AccessLogReceiver(f"127.0.0.1:{port}", "haproxy", {}, Metrics())
        with pytest.raises(OSError):
            await receiver.start()
    assert receiver.address == ("127.0.0.1", port)  # not listening
    await receiver.stop()
    await receiver.stop()
    assert receiver.kernel_drops() is None
    assert receiver.kernel_drops_total() is None  # it never listened


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="format"):
        AccessLogReceiver("127.0.0.1:5140", "apache", {}, Metrics())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host:port"):
        AccessLogReceiver("5140", "nginx", {}, Metrics())
    with pytest.raises(ValueError, match="distinct"):
        AccessLogCollector([1.0, 1.0])


def test_the_export_equals_prometheus_client_observing_each_line() -> None:
    """The collector's counter and histogram, against prometheus_client's own Counter and
    Histogram (same names, labels and buckets) fed the same lines one by one."""
    durations_ms = [0, 1, 25, 26, 50, 99, 100, 250, 700, 750, 751, 29_999, 30_000, 30_001,
                    120_000, -1]
    lines = [HAPROXY_3164.replace(b"0/0/0/51/51 200", f"0/0/0/0/{ms} {code}".encode())
             for ms in durations_ms for code in (200, 502, -1)]
    metrics = Metrics()
    receiver = AccessLogReceiver("127.0.0.1:0", "haproxy",
                                 {"odoo/odoo-green": ("odoo", "green")}, metrics)
    oracle = CollectorRegistry()
    requests = Counter("odoo_watchdog_http_requests_total", "x", ["site", "color", "code"],
                       registry=oracle)
    duration = Histogram("odoo_watchdog_http_request_duration_seconds", "x", ["site", "color"],
                         buckets=HTTP_BUCKETS, registry=oracle)
    for line in lines:
        receiver.handle(line)
        parsed = parse_haproxy(line)
        assert parsed is not None
        code = "499" if parsed.status == b"-1" else parsed.status.decode()
        requests.labels("odoo", "green", code).inc()
        if parsed.seconds is not None:
            duration.labels("odoo", "green").observe(parsed.seconds)

    def exported(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...],
                                                           float]]:
        return sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                      for family in registry.collect()
                      if family.name.startswith("odoo_watchdog_http_")
                      for s in family.samples if not s.name.endswith("_created"))

    ours = exported(metrics.registry)
    assert len(ours) == 3 + len(HTTP_BUCKETS) + 3  # 3 codes; buckets, +Inf, _count, _sum
    assert ours == exported(oracle)
    values = {(name, dict(labels).get("le"), dict(labels).get("code")): value
              for name, labels, value in ours}
    assert values[("odoo_watchdog_http_requests_total", None, "200")] == len(durations_ms)
    assert values[("odoo_watchdog_http_requests_total", None, "499")] == len(durations_ms)
    count = "odoo_watchdog_http_request_duration_seconds_count"
    bucket = "odoo_watchdog_http_request_duration_seconds_bucket"
    assert values[(count, None, None)] == 3 * (len(durations_ms) - 1)
    assert values[(bucket, "0.025", None)] == 3 * 3  # 0, 1 and 25 ms: le is inclusive
    assert values[(bucket, "0.75", None)] == 3 * 10
    assert values[(bucket, "30.0", None)] == 3 * 13
    assert values[(bucket, "+Inf", None)] == 3 * 15


def test_many_unknown_servers_do_not_stop_known_ones_from_counting() -> None:
    metrics = Metrics()
    receiver = haproxy_receiver(metrics)
    for i in range(10_050):
        receiver.handle(HAPROXY_3164.replace(b"odoo/odoo-green", f"odoo/x{i}".encode()))
    receiver.handle(HAPROXY_3164)
    assert len(receiver._series) <= accesslog.MAX_UNKNOWN + 1
    assert (receiver.unmapped, receiver.parsed) == (10_050, 1)
    assert sample(metrics, "odoo_watchdog_http_requests_total", site="odoo", color="green",
                  code="200") == 1
