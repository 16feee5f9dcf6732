"""``python -m benchmarks``: run the scenarios, print a table for each, write the JSON file."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import redis

from streaming.embedded import EmbeddedServer

from . import machine, report
from . import seed as seed_loader
from .core import SCENARIOS, Context, Result
from .scenarios import load_all

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes: the whole run in under a minute (CI).")
@click.option("--scenario", "names", multiple=True, metavar="NAME",
              help="Run only this scenario (repeatable). See --list.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_JSON, show_default=True, help="Where to write the results.")
@click.option("--seed", "seed_path", type=click.Path(dir_okay=False), default=None,
              help="The seed's redis_stream_manager.py [default: ../shared/seed/ beside the repo].")
@click.option("--redis-url", envvar="REDIS_URL", default=None,
              help="Use this server instead of a private embedded one [env: REDIS_URL].")
@click.option("--cluster-url", envvar="REDIS_CLUSTER_URL", default=None,
              help="The cluster column's Redis Cluster (redis+cluster://node:port) instead of a "
                   "private embedded one [env: REDIS_CLUSTER_URL].")
@click.option("--no-cluster", is_flag=True, help="Leave the cluster column out.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the tables as Markdown (for the README).")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
def main(quick: bool, names: tuple[str, ...], json_path: Path, seed_path: str | None,
         redis_url: str | None, cluster_url: str | None, no_cluster: bool,
         markdown_path: Path | None, list_only: bool) -> None:
    """Benchmark this project against the seed design, on the same server, in one run."""
    load_all()
    if list_only:
        for scenario in SCENARIOS.values():
            click.echo(f"{scenario.name:14} {scenario.title}"
                       + (f"  [{scenario.pending}]" if scenario.pending else ""))
        return
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(SCENARIOS)}", param_hint="--scenario")
    path = str(Path(seed_path).resolve()) if seed_path else str(seed_loader.default_path())
    seed = seed_loader.load(path)
    with _server(redis_url) as (url, embedded):
        ctx = Context(url, quick, seed, path if seed else None, embedded,
                      cluster=None if no_cluster else cluster_url or "embedded")
        try:
            document = _run(ctx, list(names) or list(SCENARIOS), redis_url is not None)
        finally:
            ctx.close()
    report.write_json(json_path, document)
    click.echo(f"\nresults written to {json_path}")
    if markdown_path is not None:
        markdown_path.write_text(document["markdown"])
        click.echo(f"Markdown tables written to {markdown_path}")
    if any(item["status"] == "error" for item in document["scenarios"].values()):
        raise SystemExit(1)


@contextlib.contextmanager
def _server(redis_url: str | None) -> Iterator[tuple[str, EmbeddedServer | None]]:
    if redis_url:
        yield redis_url, None
        return
    with EmbeddedServer() as server:
        yield server.url, server


def _run(ctx: Context, names: list[str], shared_server: bool) -> dict[str, Any]:
    started = time.monotonic()
    client = redis.Redis.from_url(ctx.redis_url)
    info = machine.describe(client)
    client.close()
    header = _header(ctx, info, shared_server)
    report.print_header(header)
    results, done = {}, []
    for name in names:
        result = _execute(ctx, name)
        report.print_result(result)
        results[name] = result.to_json()
        done.append(result)
    info["load_after"] = machine.load()
    footer = f"load average (1, 5, 15 min) at the end: {info['load_after']}"
    report.print_header(["", footer])
    return {
        "markdown": report.markdown([*header, footer], done),
        "mode": "quick" if ctx.quick else "full",
        "machine": info,
        "server": "REDIS_URL" if shared_server else "private embedded server",
        "seed": ctx.seed_path or "not found",
        "ceilings": ctx.ceilings,
        "seconds": round(time.monotonic() - started, 1),
        "scenarios": results,
    }


def _execute(ctx: Context, name: str) -> Result:
    try:
        return SCENARIOS[name].execute(ctx)
    except Exception:  # boundary: one failed scenario is reported, the others still run
        detail = traceback.format_exc()
        click.echo(detail, err=True)
        return Result(name, SCENARIOS[name].title, status="error",
                      notes=[detail.strip().splitlines()[-1]])


def _header(ctx: Context, info: dict[str, Any], shared_server: bool) -> list[str]:
    lines = [f"machine: {machine.one_line(info)}",
             f"mode: {'quick' if ctx.quick else 'full'}; server: "
             + ("REDIS_URL (shared: command counts include other clients)" if shared_server
                else "private embedded server")]
    lines.append(f"seed: {ctx.seed_path}" if ctx.seed else
                 "seed: not found (seed columns say n/a); pass --seed PATH")
    lines.append(f"cluster column: {_cluster_text(ctx.cluster)}")
    lines.append(f"load average (1, 5, 15 min) at the start: {info['load_before']}")
    if info["load_before"] and info["load_before"][0] > machine.BUSY:
        lines.append("warning: other processes are using the CPU; the figures will be noisy")
    return lines


def _cluster_text(cluster: str | None) -> str:
    if cluster is None:
        return "off (--no-cluster)"
    if cluster == "embedded":
        return "a private embedded Redis Cluster, 3 primaries on this host"
    return f"{cluster} (REDIS_CLUSTER_URL)"
