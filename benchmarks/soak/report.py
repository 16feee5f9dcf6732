"""The soak's figures as text: faults by kind, runs by ending, exactness, duplicates, hangs,
and the worst time from a fault to a stored ending."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def render(summary: dict[str, Any], *, problems: int = 15) -> str:
    s = summary
    lines = [
        f"soak {s['mode']} seed {s['seed']}: {s['runs']} runs, {s['readers']} readers, "
        f"{sum(s['faults'].values())} faults in {s['seconds']} s "
        f"({s['create_failures']} run creations refused while faulty"
        + (f": {s['create_errors']}" if s["create_errors"] else "") + ")",
        f"bounds: claimed run {s['bounds']['claimed']:g} s, queued run "
        f"{s['bounds']['queued']:g} s (settings {s['settings']})",
        "",
        "fault          count  runs hit  worst fault->stored ending  (not done)  never ended",
    ]
    for kind, row in sorted(s["fault_to_stored_ending"].items()):
        lines.append(f"{kind:14} {row['faults']:5}  {row['runs_hit']:8}  "
                     f"{_s(row['worst_s']):>26}  {_s(row['worst_not_done_s']):>10}  "
                     f"{row['never_ended']:11}")
    endings = ", ".join(f"{k} {v}" for k, v in sorted(s["runs_by_ending"].items()))
    done = s["runs_by_ending"].get("done", 0)
    lines += [
        "",
        f"runs by stored ending: {endings}; restarted runs: {s['restarted_runs']}",
        f"done runs exact: {s['done_exact']} of {done}",
    ]
    for item in s["done_inexact"][:problems]:
        lines.append(f"  inexact {item['run_id']}: {'; '.join(item['why'])[:300]}")
    for item in s["not_done"][:problems]:
        lines.append(f"  {item['ending']} {item['run_id']} (attempts {item['attempts']}): "
                     f"{item['why'][:200]}; hit by {', '.join(item['hit_by']) or 'no fault'}")
    lines += [
        f"readers {s['readers_by_kind']}: {s['connections']} connections, cursor forms "
        f"{s['cursor_forms']}; anomalies (HTTP errors, 204 before the ending, tail exits "
        f"without one) {s['anomalies']}",
        *(f"  {example[:200]}" for example in s["anomaly_examples"]),
        f"readers of one run furthest apart in getting its ending: {s['worst_reader_spread']}",
        f"duplicates {s['duplicates']}, skipped {s['skipped']}, differing {s['different']}, "
        f"ending disagreements {s['disagreements']}, made-up endings {s['made_up_endings']}, "
        f"hangs {s['hangs']}, Celery state still running after the ending "
        f"{s['celery_running_after_ending']}",
        f"workers that exited on their own (restarted as a supervisor would): "
        f"{sum(map(len, s['worker_exits'].values()))}",
        *(f"  {name}: {why}" for name, exits in s["worker_exits"].items() for why in exits),
        "",
        f"verdict: {s['verdict'].upper()} ({len(s['problems'])} runs with problems)",
    ]
    for item in s["problems"][:problems]:
        own = "; ".join(item["problems"])
        readers = "; ".join(f"{r['name'].rsplit('/', 1)[-1]}: {', '.join(r['problems'])}"
                            for r in item["readers"])
        lines.append(f"  {item['run_id']}: {own} {('| readers ' + readers) if readers else ''}"
                     [:400])
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
