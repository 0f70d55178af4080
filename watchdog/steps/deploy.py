"""The `deploy` step: bring the candidate colour up on its new version (DESIGN.md §12).

With a `container` colour (`deploy`), the candidate's container is recreated from the new image
through the docker SDK, under its own name:

1. A `<name>-wdprev` left by an earlier deploy that did not finish is put back first (below).
2. The container is read (`docker inspect`). The new one keeps what was set for the old one:
   environment, mounts (binds, named volumes, and the anonymous volumes of the image's `VOLUME`s,
   so `/var/lib/odoo` survives as with `docker compose up`), network mode and the networks'
   aliases and addresses, labels, restart policy, healthcheck, user, working dir, published
   ports, and the rest of its HostConfig (resources, devices, log driver, extra hosts, ...).
   "Set for the old one" is what differs from the old image's own config: an `ENV`, a `LABEL`,
   a `USER`, a `WORKDIR` or a `HEALTHCHECK` that came from the old image is the new image's
   now (the old image's `ODOO_VERSION=16.0` must not follow the container onto 17.0). The new
   image's entrypoint and command are used, unless the step gives `command:` (it replaces the
   command; the entrypoint stays, as for `migrate`), or the old container had a command or an
   entrypoint of its own (one that differs from the old image's, as compose's `command:
   [--proxy-mode, ...]`): those are kept like its env, since Odoo behind a proxy needs them.
   A container run with `--rm` is refused: stopping it would delete it, and it could not be
   put back.
3. The image is pulled when it is not on the host and `pull` is true (within `timeout`), and
   the step fails, saying so, when it is missing and cannot be pulled.
4. The old container is renamed `<name>-wdprev`, then stopped (SIGTERM, SIGKILL after `grace`):
   with host networking (or published ports) the new one cannot bind the port while the old one
   holds it (DESIGN "Details"). Renamed before stopped, so that a crash between the two never
   leaves a stopped container under the name with nothing to say it was ours.
5. The new container is created and started under the original name, and the step waits, up to
   `timeout` from its start, until docker says it is `healthy` (when it has a healthcheck, its
   own or its image's) and `GET <url>/web/health` passes (watchdog.odoo.check_health). A
   container that exits (and that its restart policy does not restart) fails at once.
6. Healthy: `<name>-wdprev` is removed (its volumes are kept: the new container uses them).
   Not healthy in time, exited, or docker refused to create or start it: the new container's last
   log lines are kept, it is removed, the old one is renamed back and started (and its
   /web/health waited for a little, to say in the message whether it answers again), and
   StepFailed says what happened, with those log lines as `output`. Cancelling the step does the
   same put-back before re-raising.

Crash safety (`kill -9` of the daemon during a deploy; DESIGN "Crash safety"): docker keeps
whatever state the step had reached, and `<name>-wdprev` exists exactly while a deploy is not
finished. `cleanup_deploy_leftovers(name)`, run at the daemon's start, and the start of every
deploy both put the previous container back: when `<name>-wdprev` exists, the `<name>` beside it
(if any: a new container that was created, or started, or even healthy, but whose deploy never
finished) is removed, `<name>-wdprev` is renamed `<name>` and started. So after a crash the
previous container is running under its name whatever the step's progress was, and the rollout
either runs `deploy` again from its start (which recreates the container again) or aborts with
the candidate as it was before the rollout. Without `<name>-wdprev` there is nothing to do: the
deploy either had not touched the container yet, or had finished.

`deploy_command(argv, ...)` is `{command: [...]}`, for a colour run by systemd or anything else:
the command runs (never through a shell), must exit 0 within `timeout`, and `/web/health` must
then pass within what is left of `timeout`. A command cannot be undone by the step: on failure
nothing is put back, and the message says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from watchdog.odoo import check_health_url
from watchdog.steps import command as commands
from watchdog.steps.base import Progress, StepFailed, quiet
from watchdog.steps.migrate import _client, _first_line, _lines, shown

ASIDE = "-wdprev"  # the previous container while a deploy runs: <name><ASIDE>
RESTORE_WAIT = 30.0  # at most this long for the put-back container's /web/health
PROGRESS_EVERY = 10.0  # seconds between two "still waiting" lines


@dataclass(frozen=True)
class DeployResult:
    target: str  # the container's name, or the command as shown
    seconds: float
    health: str  # how the health checks ended ("docker healthy, /web/health pass")
    image: str | None = None
    image_id: str | None = None
    previous_image_id: str | None = None
    container_id: str | None = None
    pulled: bool = False
    exit_code: int | None = None  # the command's (deploy_command)
    output: tuple[str, ...] = ()  # the command's last lines (deploy_command)


# ---------------------------------------------------------------- docker, in threads


def _connect(base_url: str | None) -> Any:
    try:
        return _client(base_url)
    except StepFailed as exc:
        cause = exc.__context__
        raise StepFailed(f"deploy: no dockerd answers ({_first_line(cause or exc)}); start "
                         "docker, or deploy that colour with {command: [...]}") from None


def _inspect(api: Any, name: str) -> dict[str, Any] | None:
    import docker.errors

    try:
        return dict(api.inspect_container(name))
    except docker.errors.NotFound:
        return None


def _running(attrs: Mapping[str, Any]) -> bool:
    state = attrs.get("State") or {}
    return bool(state.get("Running")) or state.get("Status") in ("running", "restarting")


def _force_remove(api: Any, name: str, *, anonymous_volumes: bool = False) -> bool:
    """Remove container `name` at once (SIGKILL); False if it is gone. Named volumes are always
    kept (the volumes a new container took over from the old one are named from its side)."""
    import docker.errors

    try:
        api.remove_container(name, force=True, v=anonymous_volumes)
    except docker.errors.NotFound:
        return False
    return True


def _put_back(api: Any, name: str) -> list[str]:
    """`<name>-wdprev` back under `name` (a `name` beside it is removed) and started."""
    done: list[str] = []
    aside = name + ASIDE
    if _inspect(api, aside) is None:
        return done
    # the new container's own anonymous volumes (a VOLUME only its image has) are fresh
    if _force_remove(api, name, anonymous_volumes=True):
        done.append(f"removed container {name} (the unfinished new one)")
    api.rename(aside, name)
    api.start(name)
    done.append(f"renamed {aside} back to {name} and started it")
    return done


def _log_tail(api: Any, name: str) -> tuple[str, ...]:
    try:
        raw = api.logs(name, stdout=True, stderr=True, tail=commands.TAIL)
    except Exception:  # the tail is a detail of a failure being reported
        return ()
    return tuple(_lines(iter([raw])))[-commands.TAIL:]


def _image_config(api: Any, image_id: str) -> dict[str, Any]:
    import docker.errors

    try:
        return dict(api.inspect_image(image_id).get("Config") or {})
    except docker.errors.ImageNotFound:
        return {}


def _pull(api: Any, image: str, stop: threading.Event, report: Callable[[str], None]) -> None:
    """`docker pull image`, its stream read to its end (StepFailed-ready RuntimeError)."""
    last = 0.0
    for event in api.pull(image, stream=True, decode=True):
        if stop.is_set():
            return
        if not isinstance(event, dict):
            continue
        if event.get("error"):
            raise RuntimeError(str(event["error"]))
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            status = " ".join(str(event.get(k, "")) for k in ("id", "status", "progress"))
            report(f"deploy: pulling {image}: {status.strip()[:160]}")


# ---------------------------------------------------------------- the new container's config

_HOST_OWN = ("host", "none")


def _env_set(container: Sequence[str], image: Sequence[str]) -> list[str]:
    ours = set(image)
    return [item for item in container if item not in ours]


def _dict_set(container: Mapping[str, Any] | None,
              image: Mapping[str, Any] | None) -> dict[str, Any]:
    image = image or {}
    return {k: v for k, v in (container or {}).items() if k not in image or image[k] != v}


def _links(links: Sequence[str] | None) -> list[str] | None:
    """Inspect's `/db:/web/db` as create's `db:db`."""
    if not links:
        return None
    out = []
    for link in links:
        source, _, target = link.partition(":")
        out.append(f"{source.lstrip('/')}:{target.rsplit('/', 1)[-1]}")
    return out


def create_config(attrs: Mapping[str, Any], old_image: Mapping[str, Any], image: str,
                  command: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body of `POST /containers/create` for the new container from `image`, and the
    networks to connect it to after its creation ({network: endpoint config}).

    `attrs`: `docker inspect` of the old container; `old_image`: the old image's Config."""
    config = dict(attrs.get("Config") or {})
    host = dict(attrs.get("HostConfig") or {})
    old_id = str(attrs.get("Id", ""))
    mode = str(host.get("NetworkMode") or "default")
    body: dict[str, Any] = {"Image": image}

    hostname = config.get("Hostname") or ""
    if mode not in _HOST_OWN and not mode.startswith("container:") \
            and hostname and not old_id.startswith(hostname):
        body["Hostname"] = hostname
        if config.get("Domainname"):
            body["Domainname"] = config["Domainname"]
    for key in ("Tty", "OpenStdin", "StdinOnce", "StopTimeout"):
        if config.get(key):
            body[key] = config[key]
    for key in ("User", "WorkingDir", "StopSignal"):
        if config.get(key) and config.get(key) != old_image.get(key):
            body[key] = config[key]
    if config.get("Healthcheck") and config.get("Healthcheck") != old_image.get("Healthcheck"):
        body["Healthcheck"] = config["Healthcheck"]
    if config.get("Shell") and config.get("Shell") != old_image.get("Shell"):
        body["Shell"] = config["Shell"]
    body["Env"] = _env_set(config.get("Env") or (), old_image.get("Env") or ())
    body["Labels"] = _dict_set(config.get("Labels"), old_image.get("Labels"))
    exposed = _dict_set(config.get("ExposedPorts"), old_image.get("ExposedPorts"))
    for port in host.get("PortBindings") or {}:
        exposed.setdefault(port, {})
    if exposed:
        body["ExposedPorts"] = exposed
    if command is not None:
        body["Cmd"] = list(command)
    elif config.get("Cmd") and config.get("Cmd") != old_image.get("Cmd"):
        # Set for the container, like its env: compose's `command: [--proxy-mode, ...]`
        # must not be lost when the image changes (Odoo behind a proxy needs --proxy-mode).
        body["Cmd"] = list(config["Cmd"])
    if config.get("Entrypoint") and config.get("Entrypoint") != old_image.get("Entrypoint"):
        body["Entrypoint"] = list(config["Entrypoint"])

    # Volumes that are in no bind nor mount of the HostConfig (the image's VOLUMEs and `-v
    # /path`): the same volumes again, as compose does, so that /var/lib/odoo is kept.
    # `--mount type=volume,dst=/x` without a source is an anonymous volume too: its name is
    # written into the mount.
    volumes = {str(m.get("Destination")): str(m.get("Name")) for m in attrs.get("Mounts") or ()
               if m.get("Type") == "volume" and m.get("Name")}
    mounts = []
    for mount in host.get("Mounts") or ():
        mount = dict(mount)
        if mount.get("Type") == "volume" and not mount.get("Source") \
                and str(mount.get("Target")) in volumes:
            mount["Source"] = volumes[str(mount["Target"])]
        mounts.append(mount)
    if mounts:
        host["Mounts"] = mounts
    binds = list(host.get("Binds") or ())
    targets = {b.split(":")[1] for b in binds if ":" in b}
    targets |= {str(m.get("Target", "")) for m in mounts}
    for mount in attrs.get("Mounts") or ():
        if mount.get("Type") == "volume" and mount.get("Destination") not in targets \
                and mount.get("Name"):
            suffix = "" if mount.get("RW", True) else ":ro"
            binds.append(f"{mount['Name']}:{mount['Destination']}{suffix}")
    host["Binds"] = binds or None
    host["Links"] = _links(host.get("Links"))
    body["HostConfig"] = host

    networks = dict((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    later: dict[str, Any] = {}
    if mode not in _HOST_OWN and not mode.startswith("container:"):
        endpoints = {}
        for net, endpoint in networks.items():
            endpoint = endpoint or {}
            aliases = [a for a in endpoint.get("Aliases") or ()
                       if not (old_id and old_id.startswith(a))]
            endpoints[net] = {k: v for k, v in {
                "Aliases": aliases or None, "IPAMConfig": endpoint.get("IPAMConfig"),
                "Links": _links(endpoint.get("Links")),
                "DriverOpts": endpoint.get("DriverOpts")}.items() if v}
        primary = mode if mode in endpoints else ("bridge" if mode == "default" else None)
        if primary is not None and primary in endpoints:
            if primary not in ("bridge", "default"):
                body["NetworkingConfig"] = {"EndpointsConfig": {primary: endpoints[primary]}}
            endpoints.pop(primary)
        later = endpoints
    return body, later


# ---------------------------------------------------------------- waiting for health


def _has_healthcheck(attrs: Mapping[str, Any]) -> bool:
    test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def _exited(attrs: Mapping[str, Any]) -> str | None:
    """Why the container is down for good, or None while it runs or docker restarts it."""
    state = attrs.get("State") or {}
    if state.get("Status") not in ("exited", "dead") or state.get("Restarting"):
        return None
    policy = (attrs.get("HostConfig") or {}).get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    code = int(state.get("ExitCode") or 0)
    retries = int(policy.get("MaximumRetryCount") or 0)
    restarted = int(attrs.get("RestartCount") or 0)
    if name in ("always", "unless-stopped"):
        return None
    if name == "on-failure" and code != 0 and (retries == 0 or restarted < retries):
        return None
    error = f" ({state['Error']})" if state.get("Error") else ""
    again = f", after {restarted} restarts" if restarted else ""
    return f"it exited with code {code}{error}{again}"


async def _wait_healthy(api: Any, name: str, url: str, timeout: float, interval: float,
                        progress: Progress) -> tuple[bool, str]:
    """(healthy, what was seen last) within `timeout`."""
    started = time.monotonic()
    deadline = started + timeout
    said = started
    while True:
        attrs = await asyncio.to_thread(_inspect, api, name)
        if attrs is None:
            return False, "it disappeared (removed by someone else?)"
        down = _exited(attrs)
        if down is not None:
            return False, down
        parts = []
        docker_ok = True
        if _has_healthcheck(attrs):
            health = (attrs.get("State") or {}).get("Health") or {}
            status = health.get("Status") or "starting"
            docker_ok = status == "healthy"
            seen = f"docker health {status}"
            logs = health.get("Log") or []
            if not docker_ok and logs:
                last = str(logs[-1].get("Output") or "").strip().splitlines()
                seen += f" (last check exited {logs[-1].get('ExitCode')}"
                seen += f": {last[-1][:120]})" if last else ")"
            parts.append(seen)
        restarts = int(attrs.get("RestartCount") or 0)
        if restarts:
            parts.append(f"restarted {restarts} times")
        left = max(0.5, deadline - time.monotonic())
        try:
            web_ok, seen = await asyncio.wait_for(check_health_url(url), left)
        except TimeoutError:
            web_ok, seen = False, "/web/health did not answer in time"
        parts.append(seen)
        detail = ", ".join(parts)
        if docker_ok and web_ok:
            return True, detail
        now = time.monotonic()
        if now >= deadline:
            return False, f"it was not healthy within {timeout:g} s ({detail})"
        if now - said >= PROGRESS_EVERY:
            said = now
            progress(f"deploy: waiting for {name} ({now - started:.0f} s): {detail}")
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))


# ---------------------------------------------------------------- the step


async def cleanup_deploy_leftovers(container_name: str, *, base_url: str | None = None,
                                   ) -> list[str]:
    """Put back the previous container a crashed deploy left as `<name>-wdprev` (see the
    module's docstring); what was done, [] when there was nothing to do."""
    import docker.errors

    client = await asyncio.to_thread(_connect, base_url)
    try:
        return await asyncio.to_thread(_put_back, client.api, container_name)
    except docker.errors.DockerException as exc:
        raise StepFailed(f"deploy: cannot put back {container_name}{ASIDE} as "
                         f"{container_name}: {_first_line(exc)}; do it by hand: docker rm -f "
                         f"{container_name}; docker rename {container_name}{ASIDE} "
                         f"{container_name}; docker start {container_name}") from None
    finally:
        client.close()


async def deploy(container_name: str, image: str, *, url: str, timeout: float,
                 pull: bool = True, command: Sequence[str] | None = None,
                 progress: Progress = quiet, base_url: str | None = None,
                 grace: float = 10.0, interval: float = 0.5) -> DeployResult:
    """Recreate container `container_name` from `image` and wait until it is healthy at `url`;
    on failure the previous container is back, running, and StepFailed says what happened.

    `timeout` bounds the pull and, from the new container's start, the wait for health;
    `grace`: seconds between SIGTERM and SIGKILL when the old container is stopped;
    `base_url`: the dockerd (None: DOCKER_HOST or the system socket)."""
    import docker.errors

    name = container_name
    aside = name + ASIDE
    client = await asyncio.to_thread(_connect, base_url)
    api = client.api
    started = time.monotonic()
    try:
        try:
            done = await asyncio.to_thread(_put_back, api, name)
        except docker.errors.DockerException as exc:
            raise StepFailed(f"deploy: {aside} (left by a deploy that did not finish) cannot "
                             f"be put back as {name}: {_first_line(exc)}; put it back by hand "
                             "(docker rename, docker start)") from None
        if done:
            progress(f"deploy: an earlier deploy of {name} did not finish: {'; '.join(done)}")
        try:
            attrs = await asyncio.to_thread(_inspect, api, name)
        except docker.errors.DockerException as exc:
            raise StepFailed(f"deploy: cannot inspect container {name}: {_first_line(exc)}; "
                             "is dockerd up?") from None
        if attrs is None:
            raise StepFailed(f"deploy: container {name} does not exist; deploy recreates the "
                             "candidate's container with a new image: create it once (e.g. "
                             "docker compose up -d), or deploy with {command: [...]}")
        if (attrs.get("HostConfig") or {}).get("AutoRemove"):
            raise StepFailed(f"deploy: container {name} runs with --rm (AutoRemove): stopping "
                             "it would delete it, and it could not be put back if the new one "
                             "fails; recreate it without --rm")
        pulled = await _ensure_image(api, image, pull=pull, timeout=timeout, progress=progress)
        old_image_id = str(attrs.get("Image") or "")
        old_image = await asyncio.to_thread(_image_config, api, old_image_id)
        if not old_image:
            progress(f"deploy: the image {name} was created from ({old_image_id}) is gone: its "
                     "whole environment, labels and settings are kept as they are")
        body, networks = create_config(attrs, old_image, image, command)
        was = (attrs.get("Config") or {}).get("Image") or old_image_id
        progress(f"deploy: replacing {name} ({was}) by a container of {image}")
        try:
            await asyncio.to_thread(api.rename, name, aside)
        except docker.errors.DockerException as exc:
            raise StepFailed(f"deploy: cannot rename {name} to {aside}: {_first_line(exc)}; "
                             "nothing was changed") from None
        return await _replace(api, name, image, body, networks, url=url, timeout=timeout,
                              grace=grace, interval=interval, progress=progress,
                              started=started, pulled=pulled, old_image_id=old_image_id)
    finally:
        client.close()


async def _ensure_image(api: Any, image: str, *, pull: bool, timeout: float,
                        progress: Progress) -> bool:
    """True when `image` had to be pulled; StepFailed when it is missing and cannot be."""
    import docker.errors

    try:
        await asyncio.to_thread(api.inspect_image, image)
        return False
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as exc:
        raise StepFailed(f"deploy: cannot inspect image {image}: {_first_line(exc)}") from None
    if not pull:
        raise StepFailed(f"deploy: image {image} is not on this host and the step has pull: "
                         "false; pull or load it (docker pull / docker load), or set pull: "
                         "true; the container was not touched")
    progress(f"deploy: pulling {image}")
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def report(line: str) -> None:  # from the pull's thread
        loop.call_soon_threadsafe(progress, line)

    task = asyncio.ensure_future(asyncio.to_thread(_pull, api, image, stop, report))
    failure = None
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        failure = f"it did not end within {timeout:g} s"
    except (docker.errors.DockerException, RuntimeError) as exc:
        failure = _first_line(exc)
    finally:
        stop.set()
    if failure is None:
        try:
            await asyncio.to_thread(api.inspect_image, image)
        except docker.errors.DockerException:
            failure = "the pull ended but the image is still not there"
    if failure is not None:
        raise StepFailed(f"deploy: image {image} is not on this host and pulling it failed: "
                         f"{failure}; check the image's name and tag and that its registry "
                         "answers (docker pull), or load it by hand and set pull: false; the "
                         "container was not touched")
    return True


async def _replace(api: Any, name: str, image: str, body: dict[str, Any],
                   networks: dict[str, Any], *, url: str, timeout: float, grace: float,
                   interval: float, progress: Progress, started: float, pulled: bool,
                   old_image_id: str) -> DeployResult:
    """From the old container renamed aside to the new one healthy, or the old one back."""
    import docker.errors

    aside = name + ASIDE
    phase = "stop"
    try:
        try:
            await asyncio.to_thread(api.stop, aside, timeout=max(1, round(grace)))
            phase = "create"
            created = await asyncio.to_thread(api.create_container_from_config, body, name)
            for net, endpoint in networks.items():
                await asyncio.to_thread(
                    api.connect_container_to_network, created["Id"], net,
                    aliases=endpoint.get("Aliases"), links=endpoint.get("Links"),
                    ipv4_address=(endpoint.get("IPAMConfig") or {}).get("IPv4Address"),
                    ipv6_address=(endpoint.get("IPAMConfig") or {}).get("IPv6Address"),
                    driver_opt=endpoint.get("DriverOpts"))
            phase = "start"
            await asyncio.to_thread(api.start, name)
        except docker.errors.DockerException as exc:
            what = {"stop": f"stop {aside}", "create": f"create {name} from {image}",
                    "start": f"start {name}"}[phase]
            reason = f"docker could not {what}: {_first_line(exc)}"
            raise _Failed(reason, phase) from None
        progress(f"deploy: {name} started from {image}; waiting up to {timeout:g} s for it "
                 "to be healthy")
        phase = "health"
        healthy, seen = await _wait_healthy(api, name, url, timeout, interval, progress)
        if not healthy:
            raise _Failed(seen, phase)
    except _Failed as failed:
        await asyncio.shield(_roll_back(api, name, image, failed, url=url, progress=progress,
                                        started=started))
    except BaseException:  # cancelled, or anything else: the previous container goes back
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.to_thread(_put_back, api, name))
        raise
    try:
        await asyncio.to_thread(_force_remove, api, aside)
    except docker.errors.DockerException as exc:
        progress(f"deploy: {name} is healthy but the previous container {aside} could not be "
                 f"removed ({_first_line(exc)}); remove it by hand (docker rm {aside})")
    attrs = await asyncio.to_thread(_inspect, api, name) or {}
    seconds = time.monotonic() - started
    progress(f"deploy: {name} runs {image} and is healthy after {seconds:.1f} s ({seen}); "
             f"removed {aside}")
    return DeployResult(target=name, seconds=seconds, health=seen, image=image,
                        image_id=str(attrs.get("Image") or "") or None,
                        previous_image_id=old_image_id or None,
                        container_id=str(attrs.get("Id") or "") or None, pulled=pulled)


class _Failed(Exception):
    def __init__(self, reason: str, phase: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.phase = phase


async def _roll_back(api: Any, name: str, image: str, failed: _Failed, *, url: str,
                     progress: Progress, started: float) -> NoReturn:
    """Keep the new container's last lines, remove it, put the old one back; StepFailed."""
    import docker.errors

    aside = name + ASIDE
    tail: tuple[str, ...] = ()
    if failed.phase in ("start", "health"):
        tail = await asyncio.to_thread(_log_tail, api, name)
    data: dict[str, Any] = {"phase": failed.phase, "image": image}
    try:
        await asyncio.to_thread(_put_back, api, name)
    except docker.errors.DockerException as exc:
        data["seconds"] = round(time.monotonic() - started, 3)
        raise StepFailed(
            f"deploy of {name} to {image} failed: {failed.reason}; and the previous container "
            f"could not be put back ({_first_line(exc)}): the candidate is down; put it back "
            f"by hand: docker rm -f {name}; docker rename {aside} {name}; docker start {name}",
            output=tail, data=data) from None
    progress(f"deploy: {name} failed ({failed.reason}); the previous container is back")
    ok, seen = await _restored_health(url)
    data.update(seconds=round(time.monotonic() - started, 3), previous_healthy=ok)
    back = "it answers /web/health again" if ok else f"but {seen}"
    raise StepFailed(f"deploy of {name} to {image} failed: {failed.reason}. The new container "
                     f"was removed and the previous one is back under {name} and running ("
                     f"{back}); the rollout stops here. Its last log lines are in the output.",
                     output=tail, data=data) from None


async def _restored_health(url: str, wait: float = RESTORE_WAIT) -> tuple[bool, str]:
    deadline = time.monotonic() + wait
    while True:
        try:
            ok, seen = await asyncio.wait_for(check_health_url(url), wait)
        except TimeoutError:
            ok, seen = False, "/web/health did not answer"
        if ok or time.monotonic() >= deadline:
            return ok, seen
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- {command: [...]}


async def deploy_command(argv: Sequence[str], *, url: str, timeout: float,
                         env: Mapping[str, str] | None = None, progress: Progress = quiet,
                         grace: float = 10.0, interval: float = 0.5) -> DeployResult:
    """Run `argv` (e.g. `systemctl restart odoo-green`), then wait for `<url>/web/health`;
    both within `timeout`. StepFailed on an exit other than 0, the timeout (the command is
    stopped: SIGTERM, then SIGKILL after `grace`) or a /web/health that does not pass."""
    if not argv:
        raise StepFailed("deploy: the command is empty; set prepare's deploy: {command: [...]}"
                         " or deploy: {image: ...}")
    text = " ".join(shown(argv))[:200]
    undo = ("The step cannot undo a command: put the previous version back by hand if the "
            "colour must keep serving it.")
    progress(f"deploy: running {text}")
    started = time.monotonic()
    try:
        done = await commands.run(argv, timeout=timeout, env=env, grace=grace)
    except commands.CommandError as exc:
        raise StepFailed(f"deploy: {exc}; nothing was run") from None
    data: dict[str, Any] = {"seconds": round(time.monotonic() - started, 3)}
    if done.exit_code is None:
        raise StepFailed(f"deploy: {text} did not end within {timeout:g} s and was stopped. "
                         f"{undo}", output=done.tail, data=data)
    if done.exit_code != 0:
        raise StepFailed(f"deploy: {text} exited {done.exit_code}. {undo}",
                         exit_code=done.exit_code, output=done.tail, data=data)
    left = max(0.5, timeout - (time.monotonic() - started))
    progress(f"deploy: {text} exited 0; waiting up to {left:.0f} s for {url}/web/health")
    deadline = time.monotonic() + left
    said = time.monotonic()
    while True:
        try:
            ok, seen = await asyncio.wait_for(check_health_url(url),
                                              max(0.5, deadline - time.monotonic()))
        except TimeoutError:
            ok, seen = False, "/web/health did not answer in time"
        now = time.monotonic()
        if ok:
            break
        if now >= deadline:
            data["seconds"] = round(now - started, 3)
            raise StepFailed(f"deploy: {text} exited 0 but the colour was not healthy within "
                             f"{timeout:g} s of its start ({seen}). {undo}", exit_code=0,
                             output=done.tail, data=data)
        if now - said >= PROGRESS_EVERY:
            said = now
            progress(f"deploy: waiting for {url}/web/health: {seen}")
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))
    seconds = time.monotonic() - started
    progress(f"deploy: {text} done; healthy after {seconds:.1f} s")
    return DeployResult(target=text, seconds=seconds, health=seen, exit_code=0,
                        output=done.tail)
