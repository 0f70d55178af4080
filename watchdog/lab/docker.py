"""Docker for the lab: the busybox image, a private dockerd, and containers that log on demand.

No image can be pulled here, so the lab's image is made by `docker import` of a rootfs that holds
Debian's static busybox (`/bin/busybox` and its applet links): `odoo-watchdog-busybox:lab`.
`.ci/setup-docker.sh` builds it for the system dockerd before `make test`; `ensure_image` does the
same through the SDK for any daemon (a test's private one).

`Dockerd` runs a dockerd of a test's own (own socket, data and exec roots, pid file), so that a
test may stop it without touching the system daemon. Like every lab program it is stopped by its
pid. Daemons here run with `--bridge=none --iptables=false --ip-masq=false`, and containers
with `--network none`: no traffic leaves the machine.

`LogContainer` is a busybox container whose PID 1 copies a FIFO to its stderr (where Odoo logs)
or stdout; `emit` writes batches of lines into it through `docker exec`, and returns once docker
has them in the container's log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watchdog.lab.procs import LabError, ManagedProcess

__all__ = [
    "BUSYBOX",
    "IMAGE",
    "SYSTEM_HOST",
    "Dockerd",
    "LogContainer",
    "busybox_rootfs",
    "client",
    "docker_unavailable",
    "ensure_image",
    "odoo_line",
]

IMAGE = "odoo-watchdog-busybox:lab"
BUSYBOX = Path("/bin/busybox")
SYSTEM_HOST = "unix:///var/run/docker.sock"
_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "etc", "proc", "sys", "root", "tmp")


def busybox_rootfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """A tarball rootfs: `/bin/busybox` (it must be static) and one symlink per applet."""
    if not busybox.is_file():
        raise LabError(f"{busybox} is missing: apt-get install busybox-static")
    listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.split()
    with tarfile.open(dest, "w") as tar:
        for name in _DIRS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in listing:
            applet = applet.lstrip("/")
            if applet == "bin/busybox" or "/" not in applet:
                continue
            link = tarfile.TarInfo(applet)
            link.type = tarfile.SYMTYPE
            link.linkname = "/bin/busybox"
            tar.addfile(link)
    return dest


def client(base_url: str | None = None, timeout: int = 30) -> Any:
    """A docker SDK client for `base_url`, or for DOCKER_HOST / the system socket."""
    import docker

    if base_url:
        return docker.DockerClient(base_url=base_url, version="auto", timeout=timeout)
    return docker.from_env(version="auto", timeout=timeout)


def ensure_image(api_client: Any, image: str = IMAGE) -> str:
    """The id of `image` on that daemon, imported from a busybox rootfs if it is not there."""
    import docker.errors

    api = getattr(api_client, "api", api_client)
    try:
        return str(api.inspect_image(image)["Id"])
    except docker.errors.ImageNotFound:
        pass
    repository, _, tag = image.partition(":")
    with tempfile.TemporaryDirectory(prefix="wd-rootfs-") as tmp:
        tar = busybox_rootfs(Path(tmp) / "rootfs.tar")
        api.import_image_from_file(str(tar), repository=repository, tag=tag or "latest",
                                   changes=['CMD ["/bin/sh"]'])
    return str(api.inspect_image(image)["Id"])


def docker_unavailable(base_url: str | None = None, image: str = IMAGE) -> str | None:
    """Why the lab cannot use that dockerd (None when it can): for `pytest.skip`."""
    try:
        import docker.errors

        cli = client(base_url, timeout=10)
    except Exception as exc:
        return (f"no dockerd answers at {base_url or os.environ.get('DOCKER_HOST', SYSTEM_HOST)}"
                f" ({exc}); run .ci/setup-docker.sh")
    try:
        cli.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return f"image {image} is missing; run .ci/setup-docker.sh"
    except Exception as exc:
        return f"dockerd does not answer: {exc}"
    finally:
        cli.close()
    return None


# ---------------------------------------------------------------------------------------------
# A private dockerd
# ---------------------------------------------------------------------------------------------


class Dockerd:
    """A dockerd of our own: socket, data root, exec root and pid file in a fresh directory.

    The exec root is under /tmp with a short name: containerd's sockets live in it, and a unix
    socket path may not exceed 107 bytes. `storage_driver=None` lets dockerd choose (overlay2);
    `start()` falls back to vfs when dockerd cannot start with that.
    """

    def __init__(self, workdir: Path, storage_driver: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.storage_driver = storage_driver
        self.root = Path(tempfile.mkdtemp(prefix="wd-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.pidfile = self.root / "docker.pid"
        self.process: ManagedProcess | None = None

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def argv(self, storage_driver: str | None) -> list[str]:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise LabError("dockerd is not installed: apt-get install docker.io")
        argv = [
            dockerd,
            "--host", self.base_url,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
            "--userland-proxy=false",
            "--shutdown-timeout=1",
            "--log-level=warn",
        ]
        if storage_driver:
            argv.append(f"--storage-driver={storage_driver}")
        return argv

    def _ping(self) -> bool:
        try:
            cli = client(self.base_url, timeout=2)
        except Exception:
            return False
        try:
            return bool(cli.ping())
        except Exception:
            return False
        finally:
            cli.close()

    def start(self) -> Dockerd:
        if self.process is not None and self.process.running():
            return self
        drivers = [self.storage_driver] if self.storage_driver else [None, "vfs"]
        errors = []
        for driver in drivers:
            argv = self.argv(driver)
            if "--ip6tables=false" in argv and not _supports(argv[0], "--ip6tables"):
                argv.remove("--ip6tables=false")
            self.process = ManagedProcess(
                "dockerd", argv, log_path=self.workdir / "dockerd.log", ready=self._ping,
                ready_timeout=60.0,
            )
            try:
                self.process.start()
            except LabError as exc:
                errors.append(str(exc))
                continue
            self.storage_driver = driver
            return self
        raise LabError("dockerd would not start:\n" + "\n".join(errors))

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to dockerd alone (it stops its containers, then its containerd), then what
        is left of its process group. A SIGTERM to the whole group at once would take
        containerd away under dockerd, which then waits ten seconds for it."""
        process = self.process
        if process is None or process.proc is None:
            return
        process.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.proc.wait(timeout=grace)
        process.stop(grace=5.0)

    def client(self, timeout: int = 30) -> Any:
        return client(self.base_url, timeout)

    def cleanup(self) -> None:
        """Stop it and remove its directories (after unmounting anything left in them)."""
        self.stop()
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if str(self.root) in line]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _supports(dockerd: str, flag: str) -> bool:
    try:
        out = subprocess.run([dockerd, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out.stdout


# ---------------------------------------------------------------------------------------------
# A container that logs what the test tells it to
# ---------------------------------------------------------------------------------------------

# PID 1 copies the FIFO to stderr (or stdout) forever; `cat` ends when a writer closes it, and
# the loop opens it again. A restart runs this again with the FIFO already there.
_PID1 = "[ -p /in ] || mkfifo /in; while :; do cat /in {redirect}; done"

# Writes batches: for batch k, N<k> copies of line L<k>, each ending with " #<i>".
_EMIT = """awk 'BEGIN {
  k = ENVIRON["K"] + 0
  for (b = 0; b < k; b++) {
    n = ENVIRON["N" b] + 0; l = ENVIRON["L" b]
    for (i = 1; i <= n; i++) print l " #" i
  }
}' > /in"""


def odoo_line(level: str, message: str, *, name: str = "odoo.http", db: str = "odoo",
              when: float | None = None, pid: int = 4242) -> str:
    """One Odoo-format line: `YYYY-MM-DD HH:MM:SS,mmm PID LEVEL DB NAME: MESSAGE`."""
    now = time.time() if when is None else when
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"{stamp},{int(now % 1 * 1000):03d} {pid} {level} {db} {name}: {message}"


class LogContainer:
    """A busybox container (`--network none`) that writes given lines to its log."""

    def __init__(self, docker_client: Any, name: str | None = None, *, image: str = IMAGE,
                 stream: str = "stderr") -> None:
        if stream not in ("stderr", "stdout"):
            raise ValueError("stream is stderr or stdout")
        self.client = docker_client
        self.api = getattr(docker_client, "api", docker_client)
        self.name = name or f"wd-logs-{uuid.uuid4().hex[:8]}"
        self.image = image
        self.stream = stream
        self.id: str | None = None

    def start(self) -> LogContainer:
        redirect = ">&2" if self.stream == "stderr" else ""
        created = self.api.create_container(
            self.image, ["sh", "-c", _PID1.format(redirect=redirect)], name=self.name,
            host_config=self.api.create_host_config(network_mode="none"),
            # sh as PID 1 ignores SIGTERM: without this, stopping (or dockerd shutting down)
            # waits ten seconds for it.
            stop_signal="SIGKILL",
        )
        self.id = str(created["Id"])
        self.api.start(self.id)
        self._wait_fifo()
        return self

    def _wait_fifo(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exec(["test", "-p", "/in"])[0] == 0:
                return
            time.sleep(0.02)
        raise LabError(f"container {self.name}: /in did not appear")

    def _exec(self, argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, bytes]:
        assert self.id is not None
        exec_id = self.api.exec_create(self.id, list(argv), environment=env or {},
                                       stdout=True, stderr=True)["Id"]
        output: bytes = self.api.exec_start(exec_id)
        code = self.api.exec_inspect(exec_id)["ExitCode"]
        return int(code or 0), output

    def emit(self, batches: Sequence[tuple[str, int]], *, wait: bool = True,
             timeout: float = 30.0) -> None:
        """Write `count` copies of each `line` in order (each ending with ` #i`), then a
        sentinel INFO line, and return once docker holds the sentinel in the log."""
        sentinel = f"lab-sentinel-{uuid.uuid4().hex}"
        all_batches = [*batches, (odoo_line("INFO", sentinel, name="lab"), 1)]
        env = {"K": str(len(all_batches))}
        for index, (line, count) in enumerate(all_batches):
            if "\n" in line:
                raise ValueError("one line per batch: no newline in it")
            env[f"L{index}"] = line
            env[f"N{index}"] = str(count)
        code, output = self._exec(["sh", "-c", _EMIT], env)
        if code != 0:
            raise LabError(f"container {self.name}: writing lines failed ({code}): {output!r:.300}")
        if wait:
            self.wait_logged(sentinel, timeout)

    def wait_logged(self, text: str, timeout: float = 30.0) -> None:
        assert self.id is not None
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.api.logs(self.id, stdout=True, stderr=True, tail=3):
                return
            time.sleep(0.02)
        raise LabError(f"container {self.name}: {text!r} not in its log after {timeout:g}s")

    def restart(self) -> None:
        assert self.id is not None
        self.api.restart(self.id, timeout=0)
        self._wait_fifo()

    def stop(self) -> None:
        if self.id is not None:
            self.api.stop(self.id, timeout=0)

    def remove(self) -> None:
        """Remove the container (stopped at once); nothing happens when it is gone already."""
        import docker.errors

        if self.id is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(self.id, force=True)
        self.id = None

    def log_bytes(self) -> bytes:
        assert self.id is not None
        data: bytes = self.api.logs(self.id, stdout=True, stderr=True)
        return data

    def __enter__(self) -> LogContainer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
