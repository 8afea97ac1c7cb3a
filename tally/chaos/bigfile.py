"""Memory on a big statement file: the peak RSS of checking or loading one, by size.

`write_csv(path, size)` writes a valid generic statement CSV (channel `psp`, business
date 2026-11-24, distinct channel txn ids) of about `size` bytes, a line at a time.
`measure(path, cap)` checks it in a child process (`python -m tally.chaos.bigfile
PATH`) the way `tally statements load` does before it writes (recon/statements/load.py
`load_stream`): the checksum in chunks, then `spool.check_file` (the lines read one at
a time, checked, spooled to a temporary directory), under an address-space limit of
`cap` bytes (`RLIMIT_AS`, so that a loader that holds the file fails with MemoryError
instead of taking the machine), and returns the child's peak RSS (`ru_maxrss`), its
lines and seconds, or the error. `measure(path, cap, cli=True)` runs the whole
command instead, `python -m tally statements load PATH --channel psp --json` into an
embedded chDB in a temporary directory (the spool inserted, the version row written),
and reports that process's peak RSS (`ru_maxrss` of this child's children: it
includes this small child's RSS when it started the command, some 40 MB).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recon.statements import spool
from tally.core.policy import Policies

HEADER = (
    b"txn_id,channel_txn_id,original_txn_id,kind,status,currency,amount,fee,coupon_amount,"
    b"occurred_at\n"
)
_LINE = (
    "P{0:012d},PSP-{0:012d},,payment,success,CNY,{1}.{2:02d},0.{3:02d},,"
    "2026-11-24T{4:02d}:{5:02d}:{6:02d}Z\n"
)


def write_csv(path: Path, size: int) -> int:
    """A valid generic statement of about `size` bytes; the number of lines."""
    n = 0
    with path.open("wb", buffering=1 << 20) as f:
        f.write(HEADER)
        written = len(HEADER)
        while written < size:
            chunk = []
            for _ in range(10_000):
                s = n % 57_600  # 16 hours of seconds, from 00:00 UTC (08:00 in Shanghai)
                chunk.append(
                    _LINE.format(n, 1 + n % 997, n % 100, n % 60, s // 3600, s // 60 % 60, s % 60)
                )
                n += 1
            data = "".join(chunk).encode()
            f.write(data)
            written += len(data)
    return n


def measure(path: Path, cap: int, timeout: float = 3600.0, *, cli: bool = False) -> dict[str, Any]:
    """Check (or with `cli`, load) `path` in a child process limited to `cap` bytes of
    address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.monotonic()
    args = [sys.executable, "-m", "tally.chaos.bigfile", str(path)] + (["--cli"] if cli else [])
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=timeout,
        check=False,
    )
    out: dict[str, Any] = {"file_bytes": path.stat().st_size, "cap_bytes": cap}
    try:
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        out["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    out["exit"] = proc.returncode
    out["wall_seconds"] = round(time.monotonic() - t0, 1)
    return out


def _check(path: Path) -> dict[str, Any]:
    """What `load_stream` runs before it writes, on `path`."""
    with path.open("rb") as f, tempfile.TemporaryDirectory(prefix="tally-bigfile-") as work:
        checksum, estimate = spool.checksum(f)
        env, lines = spool.open_statement(
            f, channel="psp", fmt="csv", file_name=path.name, checksum=checksum
        )
        checked = spool.check_file(
            env, lines, lambda: Policies()["psp"], None, Path(work), estimate=estimate
        )
        return {"lines": checked.line_count, "business_date": str(checked.business_date)}


def _load(path: Path) -> dict[str, Any]:
    """`tally statements load` of `path` into a fresh embedded chDB, as a child process
    (its peak RSS is this process's children's)."""
    with tempfile.TemporaryDirectory(prefix="tally-bigfile-db-") as d:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
        env["TALLY_DATA_DIR"] = d
        cmd = [sys.executable, "-m", "tally", "statements", "load", str(path)]
        proc = subprocess.run(
            [*cmd, "--channel", "psp", "--by", "bigfile", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": tail, "peak_rss_bytes": _rss(resource.RUSAGE_CHILDREN)}
    r = json.loads(proc.stdout)
    return {
        "lines": r["lines"],
        "status": r["status"],
        "business_date": r["business_date"],
        "peak_rss_bytes": _rss(resource.RUSAGE_CHILDREN),
    }


def _rss(who: int) -> int:
    """Peak RSS in bytes. Of this process: its own (VmHWM), not `ru_maxrss`, which on
    Linux keeps the parent's peak from before the exec (a test process's, here)."""
    if who == resource.RUSAGE_SELF:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            pass
        else:
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(who).ru_maxrss * 1024


def _child(path: Path, cli: bool) -> None:
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    try:
        result.update(_load(path) if cli else _check(path))
    except MemoryError:
        result["error"] = "MemoryError"
    result.setdefault("peak_rss_bytes", _rss(resource.RUSAGE_SELF))
    result["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), "--cli" in sys.argv[2:])
