"""The harness's data model: figures, scenario results, the run context and the scenario registry.

A scenario is a function ``(ctx) -> Result`` registered with ``@scenario``. It returns figures:
one measured quantity each, with the project's value, the seed's (a number, or a note saying why
there is none), the server's own ceiling where one applies, and the target it is held to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from streaming.settings import Settings

__all__ = [
    "SCENARIOS",
    "Context",
    "Figure",
    "Result",
    "Scenario",
    "Target",
    "scenario",
]

Better = Literal["lower", "higher"]
Runner = Callable[["Context"], "Result"]
SEED_MISSING = "n/a (seed not found)"


@dataclass(frozen=True)
class Target:
    """What a figure is held to: ``value <op> limit`` and, if ``gain`` is set, at least ``gain``
    times better than the seed."""

    limit: float | None = None
    gain: float | None = None

    def text(self, better: Better, unit: str) -> str:
        parts = []
        if self.limit is not None:
            parts.append(f"{'<=' if better == 'lower' else '>='} {_num(self.limit)} {unit}")
        if self.gain is not None:
            parts.append(f">= {_num(self.gain)}x seed")
        return ", ".join(parts)


@dataclass
class Figure:
    """One measured quantity of a scenario."""

    name: str
    unit: str
    better: Better
    project: float | None
    seed: float | str | None = None
    ceiling: float | None = None
    ceiling_source: str = ""
    target: Target | None = None
    note: str = ""
    #: The project again with a Redis Cluster as the stream store (``Context.cluster_url()``),
    #: same parameters; ``None`` where the scenario has no cluster column.
    cluster: float | None = None

    @property
    def gain(self) -> float | None:
        """How many times better the project is than the seed (> 1: the project wins)."""
        if not _finite(self.project) or not isinstance(self.seed, int | float):
            return None
        seed, project = float(self.seed), float(self.project)  # type: ignore[arg-type]
        better, worse = (seed, project) if self.better == "lower" else (project, seed)
        if worse > 0:
            return better / worse
        return math.inf if better > 0 else None  # both zero: no ratio

    @property
    def met(self) -> bool | None:
        """Whether the target holds; ``None`` when there is no target or no figure."""
        if self.target is None or not _finite(self.project):
            return None
        ok = True
        value = float(self.project)  # type: ignore[arg-type]
        if self.target.limit is not None:
            limit = self.target.limit
            ok = value <= limit if self.better == "lower" else value >= limit
        if self.target.gain is not None and self.gain is not None:
            ok = ok and self.gain >= self.target.gain
        return ok

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.text(self.better, self.unit) if self.target else None
        data["gain"] = self.gain
        data["met"] = self.met
        return data


@dataclass
class Result:
    """What one scenario measured."""

    name: str
    title: str = ""
    status: Literal["ok", "pending", "error"] = "ok"
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title, "status": self.status, "seconds": round(self.seconds, 2),
            "params": self.params, "notes": self.notes,
            "figures": [figure.to_json() for figure in self.figures],
        }


@dataclass
class Context:
    """What every scenario gets: the server, the mode, the seed design and shared measurements."""

    redis_url: str
    quick: bool
    seed: Any | None  # the seed module, or None when it was not found
    seed_path: str | None
    embedded: Any | None = None  # the EmbeddedServer when the harness started one
    ceilings: dict[str, Any] = field(default_factory=dict)
    #: The cluster column's store: a cluster URL, ``"embedded"`` (a private 3-primary cluster
    #: started on first use), or ``None`` (no cluster column).
    cluster: str | None = None
    _cluster_server: Any | None = field(default=None, repr=False)

    def cluster_url(self) -> str | None:
        """The Redis Cluster of the cluster column, started on first use if embedded."""
        if self.cluster != "embedded":
            return self.cluster
        if self._cluster_server is None:
            from streaming.embedded import EmbeddedCluster

            self._cluster_server = EmbeddedCluster().start()
        url: str = self._cluster_server.url
        return url

    def close(self) -> None:
        """Stop what the context started (the embedded cluster)."""
        if self._cluster_server is not None:
            self._cluster_server.stop()
            self._cluster_server = None

    def ceiling(self, name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The server ceiling ``name``, measured once per harness run."""
        if name not in self.ceilings:
            self.ceilings[name] = measure()
        found: dict[str, Any] = self.ceilings[name]
        return found

    def settings(self, **overrides: Any) -> Settings:
        return Settings(redis_url=self.redis_url, **overrides)

    def size(self, quick: Any, full: Any) -> Any:
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full

    @property
    def seed_missing(self) -> str:
        return SEED_MISSING


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Runner | None
    pending: str = ""

    def execute(self, ctx: Context) -> Result:
        if self.run is None:
            return Result(self.name, self.title, status="pending", notes=[self.pending])
        started = time.monotonic()
        result = self.run(ctx)
        result.title = result.title or self.title
        result.seconds = time.monotonic() - started
        return result


#: Every scenario, in the order the harness runs them.
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str) -> Callable[[Runner], Runner]:
    """Register the decorated function as the scenario ``name``."""
    def register(fn: Runner) -> Runner:
        SCENARIOS[name] = Scenario(name, title, fn)
        return fn
    return register


def pending(name: str, title: str, reason: str) -> None:
    """Register a scenario that cannot run yet, with the reason the report shows."""
    SCENARIOS[name] = Scenario(name, title, None, reason)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"
