"""Memory on a big statement file: the peak RSS of checking one, by size.

`write_csv(path, size)` writes a valid generic statement CSV (channel `psp`, business
date 2026-11-24, distinct channel txn ids) of about `size` bytes, a line at a time.
`measure(path, cap)` checks it in a child process (`python -m tally.chaos.bigfile
PATH`): read the file as `tally statements load` does (`Path.read_bytes`), then
`read_statement`, `derive_date`, `validate` (what `load_file` runs before it writes),
under an address-space limit of `cap` bytes (`RLIMIT_AS`, so that a loader that holds
the file whole fails with MemoryError instead of taking the machine), and returns the
child's peak RSS (`ru_maxrss`), its lines and seconds, or the error.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recon.statements.checks import derive_date, read_statement, validate
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


def measure(path: Path, cap: int, timeout: float = 3600.0) -> dict[str, Any]:
    """Check `path` in a child process limited to `cap` bytes of address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tally.chaos.bigfile", str(path)],
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


def _child(path: Path) -> None:
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    try:
        data = path.read_bytes()  # as tally/cli/statements.py reads the file
        st = read_statement(data, channel="psp", fmt="csv", file_name=path.name)
        policy = Policies()["psp"]
        validate(st, policy, derive_date(st, policy, None))
        result["lines"] = len(st.lines)
    except MemoryError:
        result["error"] = "MemoryError"
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
