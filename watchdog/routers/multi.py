"""Several proxies in front of one site (DESIGN.md §15), as one `Router` made of nodes.

Two HAProxy hosts behind a floating IP or DNS round robin each send users to the colours: a
split only holds when every one of them applies it. `MultiRouter` runs each operation on every
node at once (`asyncio.gather`, each node with its own timeout, so a node that hangs costs its
timeout, not the sum), keeps what each node said last (`nodes()`), and reports a split only
when every node reported the same one: otherwise `get_weights` raises `NodesDisagree`, which
the daemon's `SiteRouter` treats like an unreadable router (the rollout waits) while it puts
the split back on the nodes that lack it (`set_on`), leaving the others alone.

Health is the worst of the nodes: a colour that any node marks DOWN is DOWN for the site (that
node sends its share of the colour's users elsewhere, so the colour does not get the share a
step says; preflight fails on it and a rollout holds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from watchdog.routers.base import (
    Router,
    RouterError,
    ServerHealth,
    Weights,
    format_weights,
    validate_weights,
)
from watchdog.schema import COLORS

__all__ = ["MultiRouter", "NodeRouter", "NodeStatus", "NodesDisagree"]

T = TypeVar("T")


@dataclass(frozen=True)
class NodeStatus:
    """What one node said at its last read or write."""

    socket: str  # the node's address, also its name in views, logs and metrics
    ok: bool  # it answered (and, for a write, took the split and read it back)
    weights: Weights | None  # the split it reported; None when it did not answer
    error: str | None = None  # why not ok

    def describe(self) -> str:
        if self.ok and self.weights is not None:
            return f"{self.socket} reports {format_weights(self.weights)}"
        return f"{self.socket}: {self.error or 'no answer'}"


class NodesDisagree(RouterError):
    """The nodes do not all report one split (or some did not answer); `nodes` has each."""

    def __init__(self, message: str, nodes: Sequence[NodeStatus]) -> None:
        super().__init__(message)
        self.nodes = list(nodes)


@runtime_checkable
class NodeRouter(Protocol):
    """What `SiteRouter` uses of a router with several nodes, beside the `Router` protocol."""

    node_deadline: float

    def nodes(self) -> list[NodeStatus]: ...

    async def set_on(self, sockets: Sequence[str], weights: Mapping[str, int], *,
                     drain: bool = False) -> list[NodeStatus]: ...


class MultiRouter:
    """`nodes`: (socket, router of that one node), in the config's order."""

    def __init__(self, kind: str, nodes: Sequence[tuple[str, Router]], *, node_timeout: float,
                 node_deadline: float) -> None:
        if not nodes:
            raise RouterError("a router with several nodes needs at least one")
        self.kind = kind
        self.routers = dict(nodes)
        self.node_timeout = node_timeout
        self.node_deadline = node_deadline
        self._status = {sock: NodeStatus(sock, False, None, "not read yet")
                        for sock in self.routers}

    def nodes(self) -> list[NodeStatus]:
        """Each node as of its last read or write, in the config's order."""
        return [self._status[sock] for sock in self.routers]

    # ---------------------------------------------------------------- every node at once

    async def _one(self, sock: str, op: Callable[[Router], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(op(self.routers[sock]), self.node_timeout)
        except TimeoutError:
            raise RouterError(f"{self.kind} node {sock}: no answer in "
                              f"{self.node_timeout:g}s") from None

    async def _each(self, sockets: Sequence[str],
                    op: Callable[[Router], Awaitable[T]]) -> dict[str, T | RouterError]:
        """`op` on each node in parallel: its result or its RouterError, by socket. Any other
        exception (a bug) is raised once every node has finished."""
        results = await asyncio.gather(*(self._one(sock, op) for sock in sockets),
                                       return_exceptions=True)
        out: dict[str, T | RouterError] = {}
        for sock, result in zip(sockets, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RouterError):
                raise result
            out[sock] = result
        return out

    def _keep(self, results: Mapping[str, Weights | RouterError]) -> list[NodeStatus]:
        statuses = []
        for sock, result in results.items():
            status = (NodeStatus(sock, False, None, str(result))
                      if isinstance(result, RouterError) else NodeStatus(sock, True, result))
            self._status[sock] = status
            statuses.append(status)
        return statuses

    # ---------------------------------------------------------------- the Router protocol

    async def read(self) -> list[NodeStatus]:
        """Read the split from every node."""
        return self._keep(await self._each(list(self.routers), lambda r: r.get_weights()))

    async def get_weights(self) -> Weights:
        """The split, when every node reports the same one; NodesDisagree otherwise."""
        statuses = await self.read()
        splits = {format_weights(n.weights) for n in statuses if n.ok and n.weights}
        if all(n.ok for n in statuses) and len(splits) == 1:
            weights = statuses[0].weights
            assert weights is not None
            return dict(weights)
        raise NodesDisagree(f"the {self.kind} nodes do not agree: "
                            + "; ".join(n.describe() for n in statuses), statuses)

    async def set_weights(self, weights: Mapping[str, int], *, drain: bool = False) -> Weights:
        """Apply `weights` on every node; RouterError naming each node that did not take it
        (the others have it: the combined read disagrees until all do)."""
        wanted = validate_weights(weights)
        statuses = await self.set_on(list(self.routers), wanted, drain=drain)
        failed = [n for n in statuses if not n.ok]
        if failed:
            raise RouterError(
                f"{format_weights(wanted)} is set on {len(statuses) - len(failed)} of "
                f"{len(statuses)} {self.kind} nodes; not on "
                + "; ".join(n.describe() for n in failed))
        return wanted

    async def set_on(self, sockets: Sequence[str], weights: Mapping[str, int], *,
                     drain: bool = False) -> list[NodeStatus]:
        """Apply `weights` on these nodes only (those that lack the split); each node's
        status, without raising for the ones that failed."""
        unknown = [sock for sock in sockets if sock not in self.routers]
        if unknown:
            raise RouterError(f"{self.kind} has no node {unknown[0]}")
        wanted = validate_weights(weights)
        return self._keep(await self._each(
            list(sockets), lambda r: r.set_weights(wanted, drain=drain)))

    async def health(self) -> dict[str, ServerHealth]:
        """The worst of the nodes, per colour: DOWN on any node is DOWN, and says where."""
        results = await self._each(list(self.routers), lambda r: r.health())
        seen = {sock: h for sock, h in results.items() if not isinstance(h, RouterError)}
        if not seen:
            raise RouterError(f"no {self.kind} node reports health: " + "; ".join(
                f"{sock}: {err}" for sock, err in results.items()))
        out: dict[str, ServerHealth] = {}
        for color in COLORS:
            views = [(sock, h[color]) for sock, h in seen.items() if color in h]
            if not views:
                continue
            down = [(sock, h) for sock, h in views if h.down]
            if not down:
                out[color] = views[0][1]
                continue
            where = "; ".join(f"on {sock}" + (f": {h.check}" if h.check else "")
                              for sock, h in down)
            out[color] = ServerHealth(down[0][1].state, where)
        return out

    async def check(self) -> None:
        results = await self._each(list(self.routers), lambda r: r.check())
        failed = [f"{sock}: {err}" for sock, err in results.items()
                  if isinstance(err, RouterError)]
        if failed:
            raise RouterError(f"{len(failed)} of {len(results)} {self.kind} nodes fail their "
                              "check: " + "; ".join(failed))

    async def settle(self) -> None:
        """Settle on the nodes that answered last (an unreachable one is retried by the
        split's repair, not here)."""
        answered = [n.socket for n in self.nodes() if n.ok]
        results = await self._each(answered, lambda r: r.settle())
        failed = [f"{sock}: {err}" for sock, err in results.items()
                  if isinstance(err, RouterError)]
        if failed:
            raise RouterError(f"settling {self.kind} nodes failed: " + "; ".join(failed))

    async def close(self) -> None:
        for router in self.routers.values():
            await router.close()
