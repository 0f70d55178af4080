"""Access-log datagrams to (upstream, status, duration): syslog framing and the two parsers.

One datagram is one access-log line. Everything here works on bytes (no decoding on the hot
path), and one parser per format serves every caller: the receiver's hot path
(`AccessLogReceiver.handle`, through `FIELDS`) and `parse_haproxy` / `parse_nginx` are the
same pre-compiled regular expression and the same code for the fields.

1. **Syslog framing**: RFC 3164 `<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`, HAProxy's variant
   of it without a host (its default), RFC 5424 `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`,
   HAProxy's `format short` (`<PRI>msg`) and `format raw` (no header at all). The parsers
   match the header and the line in one go; `syslog_message` strips the header alone.
2. **Parsing** the message, one regular expression per format anchored at the start of the
   line:

   - HAProxy `option httplog` (and `option httpslog`, and any `log-format` that begins like
     them): `client:port [date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes ...`.
     The duration is **Ta**, the total active time: from the first byte of the request to the
     last byte of the response, which is what the user waited for (Tr, the server's time to
     the response headers, leaves out the transfer). Ta is also the one timer that stays set
     when a request is aborted or times out (then Tr is -1): a 504 after `timeout server`
     counts with the time it took, so timeouts push the P95 up instead of vanishing from it.
     A Ta of -1 counts the request but observes no duration. Do not use `option logasap`:
     Ta then stops at the response headers (it is logged as `+N`). A status of -1 (HAProxy
     never sent a status: the client went away first) stays b"-1" here and is exported as
     code 499, nginx's "client closed request", so both proxies give the same series.
   - nginx in the project's `log_format odoo_watchdog` (`deploy/nginx/access-log.conf`):
     `$remote_addr [$time_local] $status $request_time "$upstream_addr" ...`. The duration is
     `$request_time` (from the first byte read from the client to the last byte written to
     it: the same span as HAProxy's Ta). The fields the receiver needs come before the
     request line and the headers, so a line cut short by a long user agent still counts,
     and fields may be appended after them. After a retry nginx lists every upstream tried
     (`a, b`, or `a : b` across upstream groups): the last one answered, and is the one kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, NamedTuple

__all__ = [
    "FIELDS",
    "AccessLine",
    "Fields",
    "Format",
    "haproxy_fields",
    "nginx_fields",
    "parse_haproxy",
    "parse_nginx",
    "syslog_message",
]

Format = Literal["haproxy", "nginx"]
# (upstream, status, seconds): what the hot path unpacks; a plain tuple, because building a
# NamedTuple costs a third of the parse.
Fields = tuple[bytes, bytes, float | None]


class AccessLine(NamedTuple):
    """One parsed access-log line: whom it went to, the status, and how long it took."""

    upstream: bytes  # HAProxy: b"backend/server"; nginx: the last address of $upstream_addr
    status: bytes  # b"200"; HAProxy's b"-1" stays as it is here (exported as 499)
    seconds: float | None  # None when the proxy logged no duration (-1)


# ---------------------------------------------------------------- syslog framing

# RFC 5424 STRUCTURED-DATA: one or more [id param="value" ...] with \" \] \\ escaped in values.
_SD = rb'(?:\[[^\]"\s]*(?:\s+[^=\s\]]+="(?:[^"\\]|\\.)*")*\s*\])+'
# One header, whichever framing; a datagram without `<PRI>` (HAProxy's `format raw`) has none.
_HEADER = (
    rb"<\d{1,3}>(?:"
    # RFC 5424: 1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [BOM]MSG
    rb"1 \S+ \S+ \S+ \S+ \S+ (?:-|" + _SD + rb")(?: |$)(?:\xef\xbb\xbf)?"
    # RFC 3164: Mmm dd hh:mm:ss (or rsyslog's RFC 3339 stamp) [HOST] TAG[PID]: MSG; HAProxy
    # sends no host unless `log-send-hostname`. Nothing after <PRI>: HAProxy's `format short`.
    rb"|(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d |\d{4}-\d\d-\d\dT\S+ )(?:\S+ )??\S+: "
    rb")?"
)
_HEADER_RE = re.compile(_HEADER)


def syslog_message(data: bytes) -> bytes:
    """The message of one syslog datagram, without its header and its trailing newline."""
    match = _HEADER_RE.match(data)
    return data[match.end() if match else 0:].rstrip(b"\r\n\x00")


# ---------------------------------------------------------------- parsers

# The header is optional: a parser takes a whole datagram as well as a bare message (an
# access-log line starts with the client's address, never with `<`). The quantifiers are
# possessive (`++`, `*+`) where what follows cannot be matched by them anyway: the same
# matches, with less work for the regular expression engine.
# client:port [accept date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes ...
_HAPROXY = re.compile(
    rb"(?:" + _HEADER + rb")?"
    rb"[^ ]++ \[[^ \]]++\] [^ ]++ ([^/ ]++/[^ ]++) "
    rb"[-\d]++/[-\d]++/[-\d]++/[-\d]++/\+?+(-1|\d++) (-1|\d{3}) ").match
# $remote_addr [$time_local] $status $request_time "$upstream_addr" ...; of $upstream_addr
# only what follows its last space: after a retry nginx lists every upstream tried ("a, b",
# or "a : b" across upstream groups), and the last one answered.
_NGINX = re.compile(
    rb"(?:" + _HEADER + rb")?"
    rb'[^ ]++ \[[^\]]*+\] (\d{3}) (\d++(?:\.\d++)?) "(?:[^"]* )?([^" ]*+)"').match


def haproxy_fields(data: bytes) -> Fields | None:
    """(b"backend/server", status, Ta in seconds or None) of an `option httplog` line, bare
    or in a syslog datagram; None when it is not one."""
    match = _HAPROXY(data)
    if match is None:
        return None
    upstream, ta, status = match.groups()
    return upstream, status, int(ta) / 1000.0 if ta != b"-1" else None


def nginx_fields(data: bytes) -> Fields | None:
    """(the last address of $upstream_addr, status, $request_time) of a line in the project's
    `log_format odoo_watchdog`, bare or in a syslog datagram; None when it is not one."""
    match = _NGINX(data)
    if match is None:
        return None
    status, seconds, upstream = match.groups()
    return upstream, status, float(seconds)


FIELDS: dict[str, Callable[[bytes], Fields | None]] = {
    "haproxy": haproxy_fields,
    "nginx": nginx_fields,
}


def parse_haproxy(message: bytes) -> AccessLine | None:
    """An `option httplog` line, or None when the message is not one."""
    fields = haproxy_fields(message)
    return None if fields is None else AccessLine(*fields)


def parse_nginx(message: bytes) -> AccessLine | None:
    """A line in the project's `log_format odoo_watchdog`, or None when the message is not one."""
    fields = nginx_fields(message)
    return None if fields is None else AccessLine(*fields)
