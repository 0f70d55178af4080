"""The Odoo stand-in: an aiohttp app that speaks Odoo 16-19's HTTP and RPC surface on loopback.

Real Odoo cannot be installed in the lab, so this answers what the watchdog, the load clients
and the demo ask of an Odoo worker: `/web/health` (and `?db_server_status=1`), `/web/login`,
`/web/webclient/version_info`, `/web/session/authenticate`, `/xmlrpc/2/common|object|db`,
`/jsonrpc`, `/websocket/health`; it writes Odoo-format log lines, and faults can be injected
while it runs through `/__lab__/faults`. Every response says which colour answered
(`X-Odoo-Color`, `X-Odoo-Version`).

It answers as real Odoo 17 and 18 were seen to, per version (`--version`): no keep-alive
(HTTP/1.0 on 16/17, `Connection: close` on 18/19), absolute redirects on 16/17, `/odoo` from 18,
`?db_server_status=1` honoured from 18, XML-RPC faults logged from 18, werkzeug's error pages,
a CSRF token needed by unsafe methods on http routes, a 500 without a Host header, and a
password check that costs `--password-cost` seconds (0.35 by default, as Odoo's pbkdf2).

Run one: `python -m watchdog.lab.standin --port 8069 --color green --log-file odoo.log`, or
`StandinProcess("green", workdir).start()` from Python.

The modules, one purpose each:
- `app`: the aiohttp app (`create_app`), its middleware (faults, access log, metrics, Host,
  CSRF) and the lab's control routes; `cli`: the command line (`main`, also `__main__`);
- `routes`: Odoo's routes (health, login, web client, sessions, JSON-RPC, XML-RPC);
- `responses`: the bodies as Odoo shapes them (error pages, JSON-RPC and XML-RPC envelopes);
- `state`: what one app holds (`StandinSettings`, faults, sessions, metrics, log, backend);
- `services`: the `common` / `object` / `db` RPC services; `partners`: `res.partner` in
  memory; `errors`: Odoo's exceptions as they look on the wire;
- `faults`: the injectable faults and the helpers that set them; `log`: Odoo-format log lines;
- `process`: `StandinProcess`, a stand-in run as a separate process.
"""

from watchdog.lab.standin.app import create_app
from watchdog.lab.standin.cli import main
from watchdog.lab.standin.faults import (
    FAULT_NAMES,
    FaultError,
    Faults,
    aclear_faults,
    aget_faults,
    aset_faults,
    clear_faults,
    get_faults,
    set_faults,
)
from watchdog.lab.standin.log import OdooLog
from watchdog.lab.standin.process import StandinProcess
from watchdog.lab.standin.state import StandinSettings

__all__ = [
    "FAULT_NAMES",
    "FaultError",
    "Faults",
    "OdooLog",
    "StandinProcess",
    "StandinSettings",
    "aclear_faults",
    "aget_faults",
    "aset_faults",
    "clear_faults",
    "create_app",
    "get_faults",
    "main",
    "set_faults",
]
