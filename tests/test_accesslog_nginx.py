"""The access-log receiver behind a real nginx 1.22 (nginx-light), over syslog/UDP.

nginx runs the shipped snippet deploy/nginx/access-log.conf (the project's `log_format
odoo_watchdog` and `access_log syslog:server=...`), with only the receiver's port changed, in
front of two real stand-ins at 50/50. A client sends a known number of requests; the
receiver's counts per colour match the colours the client saw (`X-Odoo-Color`) within 1%.
A third upstream server that refuses connections makes nginx retry on another one, so
`$upstream_addr` holds lists like "a, b", and the last address must be the one counted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.accesslog_helpers import check_counts_per_color, durations_counted
from watchdog.accesslog import AccessLogReceiver
from watchdog.config import DaemonConfig
from watchdog.lab.nginx import NginxLab
from watchdog.lab.procs import free_port, free_udp_port
from watchdog.lab.standin import StandinProcess, clear_faults
from watchdog.metrics import Metrics

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ROOT / "deploy" / "nginx" / "access-log.conf"
REQUESTS = 3000

CONFIG = """\
# nginx lab config for the access-log test; every path is inside the workdir.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    # The shipped snippet, as deploy/nginx/odoo.conf includes it.
    include {snippet};
    include {upstream_file};

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


class AccessLogNginx(NginxLab):
    """The lab's nginx with the shipped access-log snippet pointed at `syslog_port`."""

    def __init__(self, workdir: Path, upstream_file: Path, syslog_port: int) -> None:
        super().__init__(workdir, upstream_file)
        self.snippet = workdir / "access-log.conf"
        self.syslog_port = syslog_port

    def render(self) -> str:
        text = SNIPPET.read_text()
        assert "syslog:server=127.0.0.1:5140," in text
        self.snippet.write_text(
            text.replace("127.0.0.1:5140", f"127.0.0.1:{self.syslog_port}"))
        return CONFIG.format(
            user="user root;\n" if os.geteuid() == 0 else "", dir=self.workdir, port=self.port,
            snippet=self.snippet, upstream_file=self.upstream_file, upstream=self.upstream)


@dataclass
class Rig:
    receiver: AccessLogReceiver
    metrics: Metrics
    nginx: AccessLogNginx


@pytest.fixture
async def rig(tmp_path: Path, standins: tuple[StandinProcess, ...]) -> AsyncIterator[Rig]:
    blue, green = standins
    for proc in (blue, green):
        clear_faults(proc.url)
    refused = free_port()  # nothing listens there: nginx retries on the next server
    upstream_file = tmp_path / "odoo-upstream.conf"
    upstream_file.write_text(
        "upstream odoo {\n"
        f"    server 127.0.0.1:{blue.port} weight=10;\n"
        f"    server 127.0.0.1:{green.port} weight=10;\n"
        f"    server 127.0.0.1:{refused} weight=1 max_fails=0;\n"
        "}\n")
    syslog_port = free_udp_port()
    metrics = Metrics()
    config = DaemonConfig.model_validate({
        "access_log": {"listen": f"127.0.0.1:{syslog_port}", "format": "nginx"},
        "sites": {"odoo": {
            "router": {"kind": "nginx", "upstream_file": str(upstream_file), "upstream": "odoo"},
            "colors": {"blue": {"server": f"127.0.0.1:{blue.port}", "url": blue.url},
                       # a host name: nginx logs the address it connected to
                       "green": {"server": f"localhost:{green.port}", "url": green.url}},
        }},
    })
    receiver = AccessLogReceiver.from_config(config, metrics)
    assert receiver is not None
    nginx = AccessLogNginx(tmp_path / "nginx", upstream_file, syslog_port)
    await receiver.start()
    try:
        await asyncio.to_thread(nginx.start)
        try:
            yield Rig(receiver, metrics, nginx)
        finally:
            nginx.stop()
    finally:
        await receiver.stop()


async def test_counts_per_colour_from_nginx_access_logs(rig: Rig) -> None:
    receiver = rig.receiver
    started = time.monotonic()
    counted = await check_counts_per_color(receiver, rig.metrics.registry, rig.nginx.url, REQUESTS)
    print(f"{time.monotonic() - started:.1f}s")
    assert receiver.unparsed == 0
    assert receiver.unmapped == 0  # every retry ended on blue or green
    # nginx did retry: some requests went to the refusing server first
    assert "connect() failed" in rig.nginx.error_log.read_text()
    # and each request counted once, with its duration
    assert durations_counted(rig.metrics.registry) == sum(counted.values())
    assert receiver.received == sum(counted.values())  # every datagram, a line for a colour
