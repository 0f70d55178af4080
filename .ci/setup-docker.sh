#!/bin/bash
# Docker for the log-source tests (the lab, docs/architecture.md), as root on Debian 12:
#   - docker.io and busybox-static, installed only when missing;
#   - a dockerd, started in the background only when none answers on /var/run/docker.sock,
#     with no bridge, no iptables and no masquerading (containers run with --network none);
#   - the image odoo-watchdog-busybox:lab, made by `docker import` of a rootfs that holds
#     Debian's static busybox and its applet links. No image is pulled from anywhere.
# Idempotent: when all is there it only checks, in about a second. Exits non-zero with a
# message saying what failed.
set -euo pipefail

IMAGE=odoo-watchdog-busybox:lab
SOCKET=/var/run/docker.sock
LOG=${DOCKERD_LOG:-/var/log/odoo-watchdog-dockerd.log}
# The docker CLI found first in PATH may be newer than Debian's dockerd; it negotiates the API.
export DOCKER_HOST=unix://$SOCKET

say() { echo "setup-docker: $*"; }
die() { echo "setup-docker: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

# ------------------------------------------------------------------ packages
missing=()
dpkg -s docker.io >/dev/null 2>&1 || missing+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -q >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
command -v dockerd >/dev/null || die "dockerd is not on PATH after installing docker.io"
command -v docker >/dev/null || die "the docker CLI is not on PATH after installing docker.io"
[ -x /bin/busybox ] || die "/bin/busybox is missing after installing busybox-static"

# ------------------------------------------------------------------ dockerd
answers() { timeout 10 docker info >/dev/null 2>&1; }

start_dockerd() {  # $1: extra flag (a storage driver) or nothing
  say "starting dockerd${1:+ $1} (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  # setsid: its own session, so that it outlives this script and make; stdin closed.
  setsid dockerd --host="unix://$SOCKET" --bridge=none --iptables=false --ip-masq=false \
    --userland-proxy=false ${1:+"$1"} </dev/null >>"$LOG" 2>&1 &
  local pid=$! i
  for i in $(seq 1 300); do  # 30 s
    if answers; then say "dockerd $pid answers"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      say "dockerd $pid exited; the end of its log:"
      tail -n 15 "$LOG" | sed 's/^/  | /'
      return 1
    fi
    sleep 0.1
  done
  say "dockerd $pid did not answer in 30 s; the end of its log:"
  tail -n 15 "$LOG" | sed 's/^/  | /'
  return 1
}

# A dockerd may run already (started here before, by systemd, or by someone else). When one
# runs but does not answer, the new one refuses to start on its pid file, and says so.
if ! answers; then
  start_dockerd "" || start_dockerd --storage-driver=vfs \
    || die "dockerd cannot run here (see $LOG)"
fi

# ------------------------------------------------------------------ the image
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "building $IMAGE from /bin/busybox"
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,dev,etc,proc,sys,root,tmp}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list-full); do
    [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$rootfs/$applet"
  done
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null \
    || die "docker import of the busybox rootfs failed"
fi

# A container must start and print, without a network.
out=$(timeout 60 docker run --rm --network none "$IMAGE" echo ok 2>&1) \
  || die "a container of $IMAGE cannot run: $out"
[ "$out" = ok ] || die "a container of $IMAGE printed '$out' instead of 'ok'"
say "docker ready: $(docker version --format '{{.Server.Version}}'), image $IMAGE"
