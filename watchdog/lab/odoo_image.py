"""The lab's Odoo docker image: a busybox container that plays an Odoo one on `--network host`.

No image can be pulled here, so, like the logs tests' `odoo-watchdog-busybox:lab`
(watchdog/lab/docker.py), each tag is made by `docker import` of a rootfs holding Debian's
static busybox, plus `/entrypoint.sh` and an `odoo` user. It is shaped like the official image
(ODOO.md "The official image"): `ENTRYPOINT ["/entrypoint.sh"]`, `CMD ["odoo"]`, `USER odoo`
(uid 101), `VOLUME /var/lib/odoo`, `ENV ODOO_VERSION=...`, `EXPOSE 8069 8071 8072`, and no
HEALTHCHECK (compose files add one to the container, as the tests do).

The entrypoint logs Odoo-format lines on stderr and runs busybox `httpd` on `$ODOO_PORT`
(default 8069; `--http-port=N`, `--http-port N` or `-p N` in the arguments win, as with
`odoo`), serving `GET /web/health` as `{"status": "pass", "lab_version": "<version>"}` (Odoo's
body is `{"status": "pass"}`; the extra key tells the tags apart). Each start appends its version
to `/var/lib/odoo/lab-starts`, so a test sees the anonymous volume survive a recreation. PID 1 is
`sh` with a TERM trap, so `docker stop` is quick. Tags (`TAGS`):

- `odoo-watchdog-odoo:16.0`, `:17.0`: healthy as soon as httpd listens;
- `:broken`: httpd listens but `/web/health` is a 404 (never healthy, never exits);
- `:crash`: logs a CRITICAL line and exits 1 at once.

`build_images(client)` imports the missing tags (and re-imports one built from another version
of this file); a second call does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from watchdog.lab.docker import busybox_rootfs

__all__ = ["REPOSITORY", "TAGS", "build_images", "image"]

REPOSITORY = "odoo-watchdog-odoo"
# tag -> (ODOO_VERSION, ODOO_LAB_MODE)
TAGS: dict[str, tuple[str, str]] = {
    "16.0": ("16.0", "ok"),
    "17.0": ("17.0", "ok"),
    "broken": ("18.0", "broken"),
    "crash": ("18.0", "crash"),
}
BUILD_LABEL = "odoo-watchdog.lab-build"
ODOO_UID = 101

ENTRYPOINT = r"""#!/bin/sh
# odoo-watchdog lab: plays an Odoo container (watchdog/lab/odoo_image.py).
port=${ODOO_PORT:-8069}
while [ $# -gt 0 ]; do
  case $1 in
    --http-port=*) port=${1#*=} ;;
    --http-port|-p) shift; port=$1 ;;
  esac
  shift
done
log() { echo "$(date -u '+%Y-%m-%d %H:%M:%S'),000 $$ $1 ? $2: $3" >&2; }
log INFO odoo "Odoo version $ODOO_VERSION (odoo-watchdog lab image, mode ${ODOO_LAB_MODE:-ok})"
echo "$ODOO_VERSION" >> /var/lib/odoo/lab-starts 2>/dev/null
if [ "$ODOO_LAB_MODE" = crash ]; then
  log CRITICAL odoo.service.server "Failed to load server-wide module \`web\`: lab crash"
  exit 1
fi
www=/tmp/odoo-lab-www
rm -rf "$www"; mkdir -p "$www/web"
if [ "$ODOO_LAB_MODE" = broken ]; then
  log CRITICAL odoo.modules.registry "Failed to load registry: lab broken image"
else
  printf '{"status": "pass", "lab_version": "%s"}' "$ODOO_VERSION" > "$www/web/health"
fi
httpd -f -p "$port" -h "$www" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid; exit 0' TERM INT
log INFO odoo.service.server "HTTP service (werkzeug) running on 0.0.0.0:$port"
wait $pid
code=$?
log CRITICAL odoo.service.server "HTTP service stopped (httpd exited $code)"
exit $code
"""

PASSWD = f"root:x:0:0:root:/root:/bin/sh\nodoo:x:{ODOO_UID}:{ODOO_UID}::/var/lib/odoo:/bin/sh\n"
GROUP = f"root:x:0:\nodoo:x:{ODOO_UID}:\n"


def image(tag: str) -> str:
    """`odoo-watchdog-odoo:<tag>`."""
    return f"{REPOSITORY}:{tag}"


def _changes(version: str, mode: str, build: str) -> list[str]:
    return [
        f"ENV ODOO_VERSION={version}",
        f"ENV ODOO_LAB_MODE={mode}",
        "ENV ODOO_RC=/etc/odoo/odoo.conf",
        "EXPOSE 8069 8071 8072",
        "USER odoo",
        'VOLUME ["/var/lib/odoo"]',
        "WORKDIR /",
        f"LABEL org.opencontainers.image.version={version} {BUILD_LABEL}={build}",
        'ENTRYPOINT ["/entrypoint.sh"]',
        'CMD ["odoo"]',
    ]


def _build_id() -> str:
    """Changes when the entrypoint or the image's settings do."""
    text = json.dumps([ENTRYPOINT, PASSWD, GROUP, TAGS, _changes("v", "m", "b")])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.uid = info.gid = uid
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def rootfs(dest: Path) -> Path:
    """The busybox rootfs of watchdog/lab/docker.py plus the entrypoint and the odoo user."""
    busybox_rootfs(dest)
    with tarfile.open(dest, "a") as tar:
        _add(tar, "entrypoint.sh", ENTRYPOINT.encode(), 0o755)
        _add(tar, "etc/passwd", PASSWD.encode(), 0o644)
        _add(tar, "etc/group", GROUP.encode(), 0o644)
        for name in ("var", "var/lib", "etc/odoo"):
            _add(tar, name, None, 0o755)
        _add(tar, "var/lib/odoo", None, 0o755, uid=ODOO_UID)
    return dest


def build_images(client: Any) -> list[str]:
    """Import every tag of TAGS that is missing (or was built by another version of this
    module) into the daemon of `client` (a docker SDK client or its `.api`); the images' names.
    """
    import docker.errors

    api = getattr(client, "api", client)
    build = _build_id()
    missing = []
    for tag in TAGS:
        try:
            labels = api.inspect_image(image(tag))["Config"].get("Labels") or {}
        except docker.errors.ImageNotFound:
            labels = {}
        if labels.get(BUILD_LABEL) != build:
            missing.append(tag)
    if missing:
        with tempfile.TemporaryDirectory(prefix="wd-odoo-rootfs-") as tmp:
            tar = rootfs(Path(tmp) / "rootfs.tar")
            for tag in missing:
                version, mode = TAGS[tag]
                api.import_image_from_file(str(tar), repository=REPOSITORY, tag=tag,
                                           changes=_changes(version, mode, build))
    return [image(tag) for tag in TAGS]
