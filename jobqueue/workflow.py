"""Workflows, the pure half: signatures, chain, group and chord, compiled into a DAG.

A :class:`Signature` is a job not yet enqueued. ``chain``, ``group`` and
``chord`` compose signatures (and each other) into a canvas; :func:`compile`
flattens any canvas into a :class:`Plan`: the nodes, in order, and for each the
nodes it waits for, in the order their results reach it (``ctx.parent_results``).

- a signature is one node; it starts and ends itself;
- ``chain(a, b, c)``: every start of ``b`` waits for every end of ``a``, and so on;
- ``group(a, b, c)``: side by side; its starts and ends are all of theirs;
- ``chord(group, callback)``: ``chain(group, callback)``: the callback waits for
  every member and receives their results in the group's order.

Everything is validated here, before any SQL (as for a plain enqueue), so a bad
signature never aborts the caller's transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from jobqueue.errors import PayloadError
from jobqueue.payload import check_lock_key, check_max_attempts, check_priority, encode_args
from jobqueue.registry import Registry, TaskRef

#: The most nodes one workflow may have (one statement inserts them all).
MAX_NODES = 100_000


class SigOptions(TypedDict, total=False):
    """What ``app.sig`` takes besides task and args."""

    queue: str | None
    priority: int | None
    max_attempts: int | None
    #: Nodes (and jobs) sharing a lock key never run at the same time.
    lock: str | None
    strict: bool


@dataclass(frozen=True)
class Signature:
    """One job of a workflow, not enqueued yet (``app.sig(task, args, ...)``)."""

    task: str
    args: str  # JSON text, validated
    queue: str
    priority: int
    max_attempts: int | None
    lock_key: str | None = None
    #: The payload version of ``args`` (the task's declared one, else 1).
    version: int = 1


@dataclass(frozen=True)
class Chain:
    steps: tuple[Canvas, ...]


@dataclass(frozen=True)
class Group:
    members: tuple[Canvas, ...]


Canvas = Signature | Chain | Group


def chain(*steps: Canvas | Iterable[Canvas]) -> Chain:
    """Run ``steps`` one after the other; each receives the results of the one before."""
    return Chain(_canvases(steps, "chain"))


def group(*members: Canvas | Iterable[Canvas]) -> Group:
    """Run ``members`` side by side (``group(sig for ...)`` works too)."""
    return Group(_canvases(members, "group"))


def chord(header: Group | Iterable[Canvas], callback: Canvas) -> Chain:
    """Run ``callback`` once every member of ``header`` succeeded, with their results."""
    head = header if isinstance(header, Group) else group(header)
    if not head.members:
        raise PayloadError("a chord needs at least one member")
    return Chain((head, _canvas(callback, "chord")))


def _canvas(value: Any, where: str) -> Canvas:
    if isinstance(value, (Signature, Chain, Group)):
        return value
    raise PayloadError(f"{where} takes signatures (app.sig(...)), chains, groups and chords, "
                       f"not {type(value).__name__}")


def _canvases(values: tuple[Any, ...], where: str) -> tuple[Canvas, ...]:
    if len(values) == 1 and not isinstance(values[0], (Signature, Chain, Group)):
        with contextlib.suppress(TypeError):
            values = tuple(values[0])  # one iterable of canvases: group(sig for ...)
    return tuple(_canvas(v, where) for v in values)


def signature(registry: Registry, ref: TaskRef, args: Mapping[str, Any] | None,
              options: SigOptions) -> Signature:
    """Validate one node as enqueue would (args, priority, attempts, task name)."""
    name, task = registry.resolve(ref, options.get("strict", True))
    queue = options.get("queue") or (task.queue if task else registry.default_queue)
    priority = options.get("priority")
    attempts = options.get("max_attempts")
    return Signature(
        task=name, args=encode_args(args, registry.payload_limit), queue=queue,
        priority=check_priority(task.priority if priority is None and task else priority or 0),
        max_attempts=None if attempts is None else check_max_attempts(attempts),
        lock_key=check_lock_key(options.get("lock")),
        version=task.version if task else 1)


@dataclass
class Plan:
    """A canvas as rows: nodes in order, and edges (node, dependency, position)."""

    nodes: list[Signature] = field(default_factory=list)
    edges: list[tuple[int, int, int]] = field(default_factory=list)  # 1-based node numbers

    def waiting(self) -> list[int]:
        """How many dependencies each node waits for."""
        counts = [0] * len(self.nodes)
        for node, _, _ in self.edges:
            counts[node - 1] += 1
        return counts


def compile_canvas(canvas: Canvas) -> Plan:
    """Flatten ``canvas`` into a :class:`Plan`."""
    plan = Plan()

    def walk(c: Canvas, after: list[int]) -> list[int]:
        """Add ``c``, its starts waiting for ``after``; return its ends."""
        if isinstance(c, Signature):
            plan.nodes.append(c)
            number = len(plan.nodes)
            if len(plan.nodes) > MAX_NODES:
                raise PayloadError(f"a workflow may have at most {MAX_NODES:,} nodes")
            plan.edges += [(number, dep, position) for position, dep in enumerate(after)]
            return [number]
        if isinstance(c, Group):
            ends: list[int] = []
            for member in c.members:
                ends += walk(member, after)
            return ends if c.members else after
        for step in c.steps:
            after = walk(step, after)
        return after

    walk(canvas, [])
    if not plan.nodes:
        raise PayloadError("an empty workflow: give it at least one signature")
    return plan
