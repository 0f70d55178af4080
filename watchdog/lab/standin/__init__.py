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

Versions 16-19 (`--version 16.0` ... `19.0`) report dated builds (`server_version`
"16.0-20250909", "17.0-20250225", "18.0-20250421", "19.0-20251002"; `server_version_info`
`[N, 0, 0, "final", 0, ""]`). 19 adds the `rpc` addon's `GET /web/version` / `/json/version`
(`{"version_info": [...], "version": "19.0-..."}`, no login) and the JSON-2 API
`POST /json/2/<model>/<method>` (`json2`), and logs Odoo 19's deprecation WARNING on every
`/xmlrpc/2/*` and `/jsonrpc` call (`odoo.addons.rpc.controllers.xmlrpc|jsonrpc: The /xmlrpc,
/xmlrpc/2 and /jsonrpc endpoints are deprecated in Odoo 19 ...`).

Users (`users`): the admin (`--login`/`--password`, uid 2) and smoke users:
`--user LOGIN:PASSWORD[:API_KEY]` (repeatable; uids from 6), `--users FILE` (a JSON list:
`[{"login", "password", "name", "totp", "api_keys": [{"key", "expires"}]}]`),
`--totp-user LOGIN` (two-factor: a web login gets `{"uid": null}`, RPC needs an API key),
`--expired-api-key LOGIN:KEY` (expired yesterday: refused from 18, as a wrong key is),
`--login-cooldown-after N` (10) and `--login-cooldown-duration S` (60): Odoo's cooldown, whose
refusal says "Too many login failures, please wait a bit before trying again.". Each user has
a partner; partners record `create_uid`/`write_uid`.

Sessions (`sessions`): `--data-dir DIR` keeps them as Odoo does under `DIR/sessions` (else in
memory); `--db-secret` is `database.secret` (default: the same for any stand-in on `--db`).
Two stand-ins share sessions when they share the directory, the database and the secret, and
their versions read each other's sessions: 16 <-> 17, 18 -> 19 (19 -> 18 and 17 <-> 18 do not).

The fault `rpc_read_error` makes `res.partner.read` fail (psycopg2 UndefinedColumn: XML-RPC
fault 1, JSON-RPC error 200, JSON-2 500); `/__lab__/info` gives the partner count.

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
- `users`: res.users (passwords, API keys, two-factor, the login cooldown); `sessions`: the
  session store per version (in memory or files in a data_dir); `json2`: 19's JSON-2 API and
  `/web/version`;
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
