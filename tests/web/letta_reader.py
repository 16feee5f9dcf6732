"""Reads one run with Letta's official Python SDK (``letta_client``), unmodified.

Run by ``tests/web/test_letta_sdk.py`` with the Python of a virtualenv that has
``letta-client`` (it imports nothing of this project). Usage::

    python letta_reader.py BASE_URL TOKEN RUN_ID [--no-pings] [--max-cuts N]

Prints one JSON line per message the SDK yields (``{"type", "message"}``), one per cut
connection (``{"cut": cursor}``), then how the read ended: ``{"end": "done"}`` or
``{"end": "error", "status", "body"}`` (the SDK raised ``APIStatusError``). After a cut it
resumes with ``starting_after`` = the last ``seq_id`` it received, as Letta's docs show.
"""

from __future__ import annotations

import argparse
import json

import httpx
from letta_client import APIConnectionError, APIStatusError, Letta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("token")
    parser.add_argument("run_id")
    parser.add_argument("--no-pings", action="store_true")
    parser.add_argument("--max-cuts", type=int, default=200)
    args = parser.parse_args()
    client = Letta(base_url=args.base_url, api_key=args.token, max_retries=0, timeout=60)
    cursor, cuts = 0, 0
    while True:
        try:
            stream = client.runs.messages.stream(args.run_id, starting_after=cursor,
                                                 include_pings=not args.no_pings)
            for message in stream:
                emit({"type": type(message).__name__, "message": message.to_dict()})
                seq_id = getattr(message, "seq_id", None)
                if isinstance(seq_id, int):
                    cursor = seq_id
            emit({"end": "done"})
            return
        except APIStatusError as exc:
            emit({"end": "error", "status": exc.status_code, "body": exc.body})
            return
        except (httpx.HTTPError, APIConnectionError) as exc:
            cuts += 1
            emit({"cut": cursor, "error": repr(exc)})
            if cuts > args.max_cuts:
                emit({"end": "too many cuts"})
                return


def emit(line: dict[str, object]) -> None:
    print(json.dumps(line, default=str), flush=True)


if __name__ == "__main__":
    main()
