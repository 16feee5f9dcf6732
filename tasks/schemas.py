"""The allow-list and params schemas of the generators, for processes that import no task code.

A web process must refuse a run that no worker would accept (an unknown generator, params that
do not fit its model) before anything is written or enqueued, without importing the generators
or their dependencies. So the registry's params models are exported once, as JSON Schema, to a
file (``tasks/params.schema.json`` for the built-in generators; regenerate it with
``python -m tasks.schemas``, a test checks it is current), and ``ParamsSchemas`` validates
params against it with ``jsonschema`` alone.

Why a file and not the store: validation never waits on Redis (a refusal costs no command, and
bad input gets its 4xx even while the store is down), the allow-list of a deployment is a
reviewed artifact (a params change shows in the diff), and it is the same in every web process
from its first request. Deployments with their own generators (``WORKER_GENERATOR_MODULES``)
export them with ``python -m tasks.schemas --module my.generators -o schema.json`` and point
``WORKER_PARAMS_SCHEMA`` at the file.

Beyond the schema, params must be storable JSON: finite numbers, text without lone
surrogates, nesting at most ``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from streaming.errors import InvalidInput

from .errors import InvalidParams, UnknownGenerator

__all__ = ["BUILTIN", "ParamsError", "ParamsSchemas", "UnknownGeneratorError", "export"]

#: The schema file of the built-in generators.
BUILTIN = Path(__file__).with_name("params.schema.json")
MAX_DEPTH = 32


class ParamsError(InvalidParams, InvalidInput):
    """Params refused before enqueue; ``field`` names the offending one (dotted path)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownGeneratorError(UnknownGenerator, InvalidInput):
    """A generator name that is not on the allow-list; ``field`` is ``generator``."""

    field = "generator"


def _strict_integer(checker: Any, value: object) -> bool:
    # Pydantic's strict ints refuse 1.0 and True; JSON Schema's "integer" would accept 1.0.
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = jsonschema.validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


class ParamsSchemas:
    """Generators by name, each with the JSON Schema of its params."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self.schemas = dict(schemas)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ParamsSchemas:
        """The schemas in ``path`` (default: the built-in generators')."""
        return cls(json.loads(Path(path or BUILTIN).read_text()))

    @cached_property
    def _validators(self) -> dict[str, Any]:
        return {name: _Validator(schema) for name, schema in self.schemas.items()}

    def names(self) -> list[str]:
        return sorted(self.schemas)

    def check(self, generator: object, params: object) -> dict[str, Any]:
        """``params`` if ``generator`` is allowed and they fit its schema; else ``ParamsError``
        (or ``UnknownGeneratorError``) naming the field and what is wrong with it."""
        if not isinstance(generator, str) or generator not in self.schemas:
            raise UnknownGeneratorError(
                f"unknown generator {generator!r}; allowed: {', '.join(self.names())}")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ParamsError(f"params must be a mapping (a JSON object), got "
                              f"{type(params).__name__}", "params")
        params = dict(params)
        _check_storable(params, "", 0)
        error = jsonschema.exceptions.best_match(self._validators[generator].iter_errors(params))
        if error is not None:
            raise ParamsError(f"invalid params for {generator!r}: {_where(error)}: "
                              f"{_describe(error)}", _where(error))
        return params


def _where(error: jsonschema.ValidationError) -> str:
    path = [str(part) for part in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        path.append(str(extra[0]) if extra else "")
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        path.append(missing[0] if missing else "")
    return ".".join(part for part in path if part) or "params"


def _describe(error: jsonschema.ValidationError, limit: int = 200) -> str:
    if error.validator in ("maxLength", "maxItems", "maxProperties"):
        return f"{len(error.instance)} long, at most {error.validator_value} allowed"
    message = error.message
    return message if len(message) <= limit else message[:limit] + "..."


def _check_storable(value: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ParamsError(f"params nest deeper than {MAX_DEPTH} levels at {path}", path)
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{path}: {value!r} is not a finite number", path)
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ParamsError(f"{path}: holds a lone surrogate {value[exc.start]!r}, not text",
                              path) from exc
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            _check_storable(key, name, depth + 1)
            _check_storable(item, name, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_storable(item, f"{path}.{index}", depth + 1)


def export(modules: list[str] | None = None) -> dict[str, Any]:
    """The JSON Schema of every registered generator's params (imports the generators)."""
    from .registry import registry

    for module in ["tasks.generators", *(modules or [])]:
        importlib.import_module(module)
    return {name: registry.get(name).params.model_json_schema() for name in registry.names()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.schemas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", default=[],
                        help="a module that registers more generators (repeatable)")
    parser.add_argument("-o", "--output", type=Path, default=BUILTIN,
                        help=f"where to write the schemas (default: {BUILTIN})")
    args = parser.parse_args(argv)
    args.output.write_text(json.dumps(export(args.module), indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
