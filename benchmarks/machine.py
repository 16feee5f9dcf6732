"""What the figures were measured on: CPU, cores, memory, Python, the server and the client."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import redis

__all__ = ["describe", "load", "one_line"]

#: A 1-minute load average above this, before the run, means someone else is using the CPU.
BUSY = 0.5


def describe(client: redis.Redis) -> dict[str, Any]:
    """The machine, the Python and the server behind ``client``."""
    info = client.info("server")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_py": metadata.version("redis"),
        "hiredis": _version("hiredis"),
        "server": _server_name(info),
        "load_before": load(),
    }


def one_line(machine: dict[str, Any]) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
            f"Python {machine['python']}, redis-py {machine['redis_py']} "
            f"(hiredis {machine['hiredis'] or 'absent'}); {machine['server']}")


def load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the OS tells them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _server_name(info: dict[str, Any]) -> str:
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"{str(info.get('server_name', 'Redis')).capitalize()} {info.get('redis_version', '?')}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page / 2**30, 1)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
