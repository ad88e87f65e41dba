"""Run a command as a child process and measure it: wall time and the kernel's peak RSS for that child."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    exit_code: int
    stdout: str
    peak_rss_mb: int
    wall_s: float


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], capture: bool = False) -> Measured:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE if capture else None, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss of this child alone (KiB on Linux)
    return Measured(os.waitstatus_to_exitcode(status), out, round(usage.ru_maxrss / 1024),
                    round(time.perf_counter() - start, 2))
