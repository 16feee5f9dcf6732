"""The soak's verdict: every run and every reader judged against the stored stream.

Pure functions of what the soak recorded (the runs it started, what each reader got, the
faults, the stored entries read back at the end), so they are tested on their own.

For every run:

- stored: seq ids 1..N once each, in order; exactly one ending, the last entry;
- every reader: each seq once and in order, the same data as stored; exactly one ending, equal
  to the stored one (an ending with no ``id:`` was made up by the reader's server, not
  stored); ended within the run's bound (below);
- output, under the client rule for ``restarted`` (``resume`` false: drop what came before;
  true: keep it, the attempt continues after ``chunks``): for a ``done`` run the ``demo``
  chunks are the input's pieces in order, so the joined text is the input; for any other
  ending, a prefix of them.

A run's bound: it should end ``duration`` (its chunks at its rate) after it was created, plus
``lease_ttl + producer_timeout + slack`` once claimed (``queue_timeout + slack`` while never
claimed); every fault that hits the run while it has no stored ending pushes that to the
fault's end plus the same. A reader without its ending by then is a hang.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .readers import ReaderLog, terminal_kind

__all__ = ["Bounds", "FaultRecord", "RunPlan", "StoredRun", "apply_restart_rule", "judge"]

Event = tuple[int | None, str, str]  # (seq, event name, data)


@dataclass(frozen=True)
class Bounds:
    lease_ttl: float
    producer_timeout: float
    queue_timeout: float
    slack: float

    @property
    def claimed(self) -> float:
        return self.lease_ttl + self.producer_timeout + self.slack

    @property
    def queued(self) -> float:
        return self.queue_timeout + self.slack


@dataclass
class RunPlan:
    run_id: str
    text: str
    chunk_size: int
    rate: float
    created: float  # wall clock

    @property
    def pieces(self) -> list[str]:
        size = self.chunk_size
        return [self.text[i:i + size] for i in range(0, len(self.text), size)]

    @property
    def duration(self) -> float:
        return len(self.pieces) / self.rate


@dataclass
class FaultRecord:
    kind: str
    target: str
    started: float
    ended: float
    detail: str = ""
    #: The run the fault was aimed at (a killed child's run), when known.
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "started": round(self.started, 3),
                "seconds": round(self.ended - self.started, 3), "detail": self.detail,
                "run_id": self.run_id}


@dataclass
class StoredRun:
    run_id: str
    #: ``(seq, fields)`` of every entry, in stream order.
    entries: list[tuple[int, dict[str, str]]]
    meta: dict[str, str]
    #: The run's task state in Celery's result backend (what Flower shows), if any.
    celery_state: str | None = None

    @property
    def events(self) -> list[Event]:
        from streaming.wire import parse_frame

        return [(seq, *parse_frame(f.get("data", ""))) for seq, f in self.entries]

    @property
    def endings(self) -> list[tuple[int, dict[str, str]]]:
        return [(seq, f) for seq, f in self.entries if f.get("complete") == "true"]

    @property
    def ending(self) -> str | None:
        from streaming.wire import parse_frame

        ends = self.endings
        if not ends:
            return None
        return terminal_kind(*parse_frame(ends[-1][1].get("data", ""))) or "done"

    @property
    def ended_at(self) -> float | None:
        ends = self.endings
        return int(ends[-1][1].get("timestamp", 0)) / 1000 if ends else None

    @property
    def message(self) -> str:
        """Why a run that is not ``done`` ended (its stored error or cancel reason)."""
        ends = self.endings
        if not ends:
            return ""
        from streaming.wire import parse_frame

        _, data = parse_frame(ends[-1][1].get("data", ""))
        try:
            body = json.loads(data)
        except ValueError:
            return ""
        inner = body.get("error") or body.get("cancelled") or {}
        return str(inner.get("message") or inner.get("reason") or "")

    @property
    def attempts(self) -> int:
        try:
            return int(self.meta.get("attempt", "0"))
        except ValueError:
            return 0


# -- the client rule for `restarted` ---------------------------------------------------------


@dataclass
class Output:
    """A run's output as a client following the rule shows it: ``(index, text)`` chunks."""

    chunks: list[tuple[Any, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    restarts: int = 0


def apply_restart_rule(events: Iterable[Event]) -> Output:
    out = Output()
    for seq, event, data in events:
        if event == "restarted":
            out.restarts += 1
            _restarted(out, seq, data)
        elif event == "message" and data != "[DONE]":
            try:
                chunk = json.loads(data)
                out.chunks.append((chunk.get("index"), chunk.get("text")))
            except (ValueError, AttributeError):
                out.notes.append(f"seq {seq}: chunk is not a demo chunk: {data[:60]!r}")
    return out


def _restarted(out: Output, seq: int | None, data: str) -> None:
    try:
        info = json.loads(data)
    except ValueError:
        info = {}
    resume = info.get("resume") if isinstance(info, dict) else None
    if resume is None:
        out.notes.append(f"restarted at seq {seq} says nothing of resume: output kept")
    elif resume is False:
        out.chunks.clear()
    elif info.get("chunks") != len(out.chunks):
        out.notes.append(f"restarted at seq {seq} resumes after {info.get('chunks')} chunks, "
                         f"the client has {len(out.chunks)}")


def output_fault(out: Output, pieces: Sequence[str], complete: bool) -> str | None:
    """Why ``out`` is not the generator's output (all of it if ``complete``), or None."""
    for position, (index, text) in enumerate(out.chunks):
        if position >= len(pieces):
            return f"{len(out.chunks)} chunks, the input has {len(pieces)}"
        if index != position or text != pieces[position]:
            joined = sum(len(str(t)) for _, t in out.chunks)
            return (f"chunk {position} is piece {index} (expected {position}): repeated or "
                    f"skipped output; joined text {joined} chars, input "
                    f"{sum(map(len, pieces))}")
    if complete and len(out.chunks) != len(pieces):
        return f"{len(out.chunks)} of {len(pieces)} chunks"
    return None


# -- judging ----------------------------------------------------------------------------------


def deadline(run: RunPlan, stored: StoredRun | None, faults: Sequence[FaultRecord],
             bounds: Bounds) -> float:
    """Wall time by which every reader of ``run`` should have its ending (see the module)."""
    claimed = stored is not None and (stored.attempts > 0 or bool(stored.entries))
    bound = bounds.claimed if claimed else max(bounds.claimed, bounds.queued)
    end = stored.ended_at if stored is not None and stored.ended_at else float("inf")
    latest = run.created
    for fault in faults:
        if fault.started <= end and fault.ended >= run.created:
            latest = max(latest, fault.ended)
    return latest + bound + run.duration


@dataclass
class RunVerdict:
    run_id: str
    ending: str | None
    message: str
    attempts: int
    restarts: int
    exact: bool | None
    problems: list[str] = field(default_factory=list)
    readers: list[dict[str, Any]] = field(default_factory=list)
    deadline: float = 0.0


def judge_run(run: RunPlan, stored: StoredRun, readers: Sequence[ReaderLog],
              faults: Sequence[FaultRecord], bounds: Bounds) -> RunVerdict:
    out = apply_restart_rule(stored.events)
    verdict = RunVerdict(run.run_id, stored.ending, stored.message, stored.attempts,
                         out.restarts, None, deadline=deadline(run, stored, faults, bounds))
    verdict.problems += _stored_problems(stored)
    fault = output_fault(out, run.pieces, stored.ending == "done")
    verdict.exact = fault is None and stored.ending == "done"
    if fault:
        verdict.problems.append(f"stored output: {fault}")
    verdict.problems += [f"stored output: {note}" for note in out.notes]
    by_seq = {seq: f.get("data", "") for seq, f in stored.entries}
    for log in readers:
        verdict.readers.append(_judge_reader(run, stored, by_seq, log, verdict.deadline))
    return verdict


#: Celery states of a task still running: wrong once the run has its ending.
RUNNING_STATES = ("STARTED", "STREAMING")


def _stored_problems(stored: StoredRun) -> list[str]:
    problems = []
    if stored.ending is not None and stored.celery_state in RUNNING_STATES:
        problems.append(f"Celery state {stored.celery_state} after the stored ending")
    seqs = [seq for seq, _ in stored.entries]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"stored seq ids are not 1..{len(seqs)} once each: {seqs[:20]}")
    ends = stored.endings
    if len(ends) != 1:
        problems.append(f"{len(ends)} stored endings")
    elif ends[0][0] != seqs[-1]:
        problems.append(f"the stored ending (seq {ends[0][0]}) is not the last entry")
    return problems


def _judge_reader(run: RunPlan, stored: StoredRun, by_seq: dict[int, str], log: ReaderLog,
                  due: float) -> dict[str, Any]:
    counts = _sequence(log, by_seq)
    problems = [f"{n} seq ids {what}" for what, n in (
        ("received twice", counts["duplicates"]), ("skipped", counts["skipped"]),
        ("differ from the stored ones", counts["different"])) if n]
    endings = sum(1 for e in log.events if terminal_kind(e.event, e.data) is not None)
    if endings > 1:
        problems.append(f"{endings} endings")
    made_up = log.ending is not None and log.ending_seq is None
    hang = log.ending is None or (log.ended_at or 0) > due
    problems += _ending_problems(run, stored, log, due, made_up, hang)
    return {"name": log.name, "behaviour": log.behaviour, "ending": log.ending,
            "made_up": made_up, "hang": hang, "connections": log.connections,
            "forms": dict(log.forms), "drops": log.drops,
            "seconds_to_ending": (log.ended_at - run.created) if log.ended_at else None,
            "problems": problems, "anomalies": log.anomalies[:5],
            "anomaly_count": len(log.anomalies), **counts}


def _sequence(log: ReaderLog, by_seq: dict[int, str]) -> dict[str, int]:
    """Seq ids a reader got twice, skipped (with no ``gap`` event), or with other data."""
    from streaming.wire import parse_frame

    last, counts = 0, {"duplicates": 0, "skipped": 0, "different": 0}
    for event in log.events:
        if event.seq is None:
            continue
        if event.seq <= last:
            counts["duplicates"] += 1
        elif event.seq > last + 1 and event.event != "gap":
            counts["skipped"] += event.seq - last - 1
        last = max(last, event.seq)
        stored_frame = by_seq.get(event.seq)
        if stored_frame is None or parse_frame(stored_frame)[1] != event.data:
            counts["different"] += 1
    return counts


def _ending_problems(run: RunPlan, stored: StoredRun, log: ReaderLog, due: float,
                     made_up: bool, hang: bool) -> list[str]:
    if log.ending is None:
        return [f"no ending: gave up {(log.gave_up_at or due) - run.created:.0f} s after the "
                f"run was created (bound {due - run.created:.0f} s)"]
    if log.ending != stored.ending:
        return [f"ending {log.ending}{' (made up, not stored)' if made_up else ''} but the "
                f"stored ending is {stored.ending}"]
    problems = [f"ending {(log.ended_at or 0) - due:.0f} s past its bound"] if hang else []
    reader_out = apply_restart_rule((e.seq, e.event, e.data) for e in log.events)
    fault = output_fault(reader_out, run.pieces, log.ending == "done")
    stored_fault = output_fault(apply_restart_rule(stored.events), run.pieces,
                                stored.ending == "done")
    if fault and fault != stored_fault:  # the stored output's own fault is reported once
        problems.append(f"output: {fault}")
    return problems


def judge(runs: Sequence[RunPlan], stored: dict[str, StoredRun],
          readers: dict[str, list[ReaderLog]], faults: Sequence[FaultRecord],
          bounds: Bounds) -> dict[str, Any]:
    """Every run's verdict, and the soak's figures and verdict."""
    verdicts = [judge_run(run, stored[run.run_id], readers.get(run.run_id, []), faults, bounds)
                for run in runs]
    return summarize(runs, verdicts, stored, faults, bounds)


def summarize(runs: Sequence[RunPlan], verdicts: Sequence[RunVerdict],
              stored: dict[str, StoredRun], faults: Sequence[FaultRecord],
              bounds: Bounds) -> dict[str, Any]:
    all_readers = [r for v in verdicts for r in v.readers]
    endings = Counter(v.ending or "none stored" for v in verdicts)
    forms: Counter[str] = Counter()
    for reader in all_readers:
        forms.update(reader["forms"])
    done = [v for v in verdicts if v.ending == "done"]
    summary = {
        "runs": len(runs),
        "readers": len(all_readers),
        "faults": dict(Counter(f.kind for f in faults)),
        "runs_by_ending": dict(endings),
        "done_exact": sum(1 for v in done if v.exact),
        "done_inexact": [{"run_id": v.run_id, "why": v.problems} for v in done if not v.exact],
        "not_done": [{"run_id": v.run_id, "ending": v.ending, "why": v.message or "no ending",
                      "attempts": v.attempts, "hit_by": _hits(run, stored[v.run_id], faults)}
                     for run, v in zip(runs, verdicts, strict=True) if v.ending != "done"],
        "restarted_runs": sum(1 for v in verdicts if v.restarts),
        "duplicates": sum(r["duplicates"] for r in all_readers),
        "skipped": sum(r["skipped"] for r in all_readers),
        "different": sum(r["different"] for r in all_readers),
        "disagreements": sum(1 for v in verdicts for r in v.readers
                             if r["ending"] is not None and r["ending"] != v.ending),
        "made_up_endings": sum(1 for r in all_readers if r["made_up"]),
        "celery_running_after_ending": sum(
            1 for v in verdicts if v.ending and stored[v.run_id].celery_state in RUNNING_STATES),
        "hangs": sum(1 for r in all_readers if r["hang"]),
        "connections": sum(r["connections"] for r in all_readers),
        "readers_by_kind": dict(Counter(r["behaviour"] for r in all_readers)),
        "anomalies": sum(r["anomaly_count"] for r in all_readers),
        "anomaly_examples": [a for r in all_readers for a in r["anomalies"]][:5],
        "cursor_forms": dict(forms),
        "fault_to_stored_ending": fault_times(runs, stored, faults),
        "worst_reader_spread": _worst_spread(verdicts),
        "bounds": {"claimed": bounds.claimed, "queued": bounds.queued},
        "problems": [{"run_id": v.run_id, "problems": v.problems,
                      "readers": [{"name": r["name"], "problems": r["problems"]}
                                  for r in v.readers if r["problems"]]}
                     for v in verdicts if v.problems or any(r["problems"] for r in v.readers)],
    }
    summary["verdict"] = "pass" if not summary["problems"] else "fail"
    summary["run_verdicts"] = [
        {"run_id": v.run_id, "ending": v.ending, "message": v.message, "attempts": v.attempts,
         "restarts": v.restarts, "exact": v.exact, "problems": v.problems,
         "deadline_s": round(v.deadline - run.created, 1), "readers": v.readers}
        for run, v in zip(runs, verdicts, strict=True)]
    return summary


def _worst_spread(verdicts: Sequence[RunVerdict]) -> dict[str, Any] | None:
    """The run whose readers got its ending furthest apart (a reader that reconnects often
    must learn the outcome no later than one that holds its connection)."""
    worst: dict[str, Any] | None = None
    for v in verdicts:
        ended = [(r["seconds_to_ending"], r["behaviour"]) for r in v.readers
                 if r["seconds_to_ending"] is not None]
        if len(ended) < 2:
            continue
        (first, early), (last, late) = min(ended), max(ended)
        if worst is None or last - first > worst["seconds"]:
            worst = {"run_id": v.run_id, "ending": v.ending, "seconds": round(last - first, 1),
                     "first": early, "last": late}
    return worst


def fault_times(runs: Sequence[RunPlan], stored: dict[str, StoredRun],
                faults: Sequence[FaultRecord]) -> dict[str, dict[str, Any]]:
    """Per fault kind: runs it hit, the worst time from the fault to a hit run's stored
    ending (all endings, and those not ``done``), and hit runs with no stored ending."""
    table: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"faults": 0, "runs_hit": 0, "worst_s": None, "worst_not_done_s": None,
                 "never_ended": 0})
    for fault in faults:
        row = table[fault.kind]
        row["faults"] += 1
        for run in runs:
            if not _hit(fault, run, stored[run.run_id]):
                continue
            row["runs_hit"] += 1
            one = stored[run.run_id]
            if one.ended_at is None:
                row["never_ended"] += 1
                continue
            delay = round(one.ended_at - fault.started, 1)
            row["worst_s"] = max(row["worst_s"] or 0.0, delay)
            if one.ending != "done":
                row["worst_not_done_s"] = max(row["worst_not_done_s"] or 0.0, delay)
    return dict(table)


def _hits(run: RunPlan, stored: StoredRun, faults: Sequence[FaultRecord]) -> list[str]:
    """The faults that hit ``run``, each with when it started after the run was created."""
    return [f"{f.kind} at +{f.started - run.created:.0f} s ({f.detail})" for f in faults
            if _hit(f, run, stored)]


def _hit(fault: FaultRecord, run: RunPlan, stored: StoredRun) -> bool:
    if fault.run_id is not None:
        return fault.run_id == run.run_id
    end = stored.ended_at or float("inf")
    return run.created <= fault.started <= end
