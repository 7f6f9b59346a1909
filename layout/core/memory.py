"""How much memory this process may still take, for the checks that refuse, before any work, what a
machine cannot hold (layout/pipeline/preflight.py, and the IDX reader's bound on decompression)."""

from __future__ import annotations

import os
import resource


def available_memory() -> int:
    """Bytes this process may still take: the system's available memory, and no more than what an
    address-space limit (ulimit -v) leaves."""
    available = 2**63
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        available = min(available, max(limit - address_space(), 0))
    return available


def address_space() -> int:
    """Bytes of address space this process uses now."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return 0


def gigabytes(n: int) -> str:
    """'43.0 GB', '310 MB', '40,010 TB'."""
    if n >= 1e13:
        return f"{n / 1e12:,.0f} TB"
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"
