"""The allow-list of generators a run may name: a message picks one by name, never by import path.

A generator is registered with the pydantic model its params must fit::

    class EchoParams(Params):
        text: str

    @register("echo", EchoParams)
    def echo(params: EchoParams, context: RunContext) -> Iterator[str]:
        yield params.text

It may be a sync or an async generator function; it yields ``str``, JSON-able ``dict``/``list``
values, or ``tasks.framing.Event`` objects.

Restarts: a run whose attempt died is continued by its next attempt. A generator registered
``resumable=True`` continues where the earlier attempts stopped: it skips the first
``context.resumed_chunks`` chunks it would yield (they are stored already), so a deterministic
generator continues exactly. Any other generator starts over; the stream's ``restarted`` event
says ``"resume": false`` and clients drop what the earlier attempts showed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidParams, UnknownGenerator

if TYPE_CHECKING:
    from worker.config import WorkerConfig

__all__ = ["GeneratorSpec", "Params", "Registry", "RunContext", "register", "registry"]

Chunks = Iterator[Any] | AsyncIterator[Any]
P = TypeVar("P", bound="Params", contravariant=True)


class Params(BaseModel):
    """Base of every generator's params: strict types, unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True)
class RunContext:
    """What a generator may know about its run besides its params."""

    run_id: str
    attempt: int
    config: WorkerConfig
    #: Output chunks earlier attempts stored that this attempt continues after; 0 on a first
    #: attempt, and always 0 for a generator not registered ``resumable``.
    resumed_chunks: int = 0


class GeneratorFunction(Protocol[P]):
    """A function the worker can run: params and context in, chunks out (sync or async)."""

    def __call__(self, params: P, context: RunContext, /) -> Chunks: ...


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    function: GeneratorFunction[Any]
    params: type[Params]
    #: Errors worth another attempt (the task is retried; the run goes on with `restarted`).
    retry_for: tuple[type[BaseException], ...] = ()
    #: A later attempt continues after the chunks earlier ones stored (``resumed_chunks``)
    #: instead of starting over.
    resumable: bool = False
    #: How many chunks a run with these params will yield, when the generator knows it in
    #: advance (progress reports show it as the total).
    total: Callable[[Any], int | None] | None = None

    def parse(self, raw: object) -> Params:
        """The run's params as this generator's model; ``InvalidParams`` says what is wrong."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidParams(f"params must be a JSON object, got {type(raw).__name__}")
        try:
            return self.params.model_validate(dict(raw))
        except ValidationError as exc:
            raise InvalidParams(f"invalid params for {self.name!r}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'params'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )


class Registry:
    """Generators by name."""

    def __init__(self) -> None:
        self._specs: dict[str, GeneratorSpec] = {}

    def register(
        self, name: str, params: type[Params], *, retry_for: tuple[type[BaseException], ...] = (),
        resumable: bool = False, total: Callable[[Any], int | None] | None = None,
    ) -> Callable[[GeneratorFunction[Any]], GeneratorFunction[Any]]:
        """Decorator: make ``function`` runnable as ``name`` (``resumable``: see the module;
        ``total``: see ``GeneratorSpec``)."""

        def add(function: GeneratorFunction[Any]) -> GeneratorFunction[Any]:
            known = self._specs.get(name)
            if known is not None and known.function is not function:
                raise ValueError(f"generator {name!r} is already registered")
            self._specs[name] = GeneratorSpec(name, function, params, retry_for, resumable,
                                              total)
            return function

        return add

    def get(self, name: object) -> GeneratorSpec:
        if not isinstance(name, str) or name not in self._specs:
            raise UnknownGenerator(
                f"unknown generator {name!r}; registered: {', '.join(sorted(self._specs))}"
            )
        return self._specs[name]

    def names(self) -> list[str]:
        return sorted(self._specs)


#: The process's registry; generator modules add themselves when imported.
registry = Registry()
register = registry.register
