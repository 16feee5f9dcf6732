"""Printing results: a table per scenario (rich when installed, else plain text), and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .core import Figure, Result

__all__ = ["fmt", "markdown", "print_header", "print_result", "write_json"]

COLUMNS = ("figure", "project", "cluster", "seed", "gain vs seed", "server ceiling", "target",
           "met")

try:
    from rich.console import Console
    from rich.table import Table

    # Not a terminal (a file, a pipe): wide enough that the tables do not wrap.
    _console: Console | None = Console() if Console().is_terminal else Console(width=160)
except ImportError:  # rich is optional: plain text then
    _console = None


def fmt(value: object, unit: str = "") -> str:
    """A number as people read it: thousands separators, 2-3 significant digits when small."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    number = _number(float(value))
    return f"{number} {unit}".strip() if unit else number


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or value == 0:
        return f"{value:.2f}"
    return f"{value:.2g}"


def cells(figure: Figure) -> tuple[str, ...]:
    gain = figure.gain
    met = {None: "", True: "yes", False: "NO"}[figure.met]
    name = ", ".join(part for part in (figure.name, figure.unit) if part)
    name += f" ({figure.note})" if figure.note else ""
    return (name, fmt(figure.project), fmt(figure.cluster), fmt(figure.seed),
            "-" if gain is None else f"{fmt(gain)}x", fmt(figure.ceiling),
            figure.target.text(figure.better, figure.unit) if figure.target else "", met)


def print_header(lines: list[str]) -> None:
    for line in lines:
        _print(line)


def print_result(result: Result) -> None:
    heading = f"{result.name}: {result.title}"
    if result.status != "ok":
        _print(f"\n{heading}\n  {result.status}: {'; '.join(result.notes)}")
        return
    if _console is not None:
        table = Table(title=heading, title_justify="left", show_lines=False)
        for column in COLUMNS:
            table.add_column(column, overflow="fold")
        for figure in result.figures:
            table.add_row(*cells(figure))
        _console.print()
        _console.print(table)
    else:
        _print(f"\n{heading}")
        _print(" | ".join(COLUMNS))
        for figure in result.figures:
            _print(" | ".join(cells(figure)))
    for source in dict.fromkeys(f.ceiling_source for f in result.figures if f.ceiling_source):
        _print(f"  server ceiling: {source}")
    for note in result.notes:
        _print(f"  note: {note}")
    _print(f"  ({result.seconds:.1f} s)")


def markdown(header: list[str], results: list[Result]) -> str:
    """The run as Markdown (what the README's performance table is pasted from)."""
    lines = [f"    {line}" for line in header]
    lines += ["", "| scenario | " + " | ".join(COLUMNS) + " |",
              "| --- " * (len(COLUMNS) + 1) + "|"]
    for result in results:
        if result.status != "ok":
            lines.append(f"| {result.name} | {result.status}: {'; '.join(result.notes)} |"
                         + " |" * (len(COLUMNS) - 1))
            continue
        for index, figure in enumerate(result.figures):
            name = result.name if index == 0 else ""
            lines.append(f"| {name} | " + " | ".join(c.replace("|", "/") for c in cells(figure))
                         + " |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(document), indent=2, allow_nan=False) + "\n")


def _plain(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null`` (strict JSON) and unknown types as text."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _print(text: str) -> None:
    if _console is not None:
        _console.print(text, highlight=False, markup=False)
    else:
        print(text)
