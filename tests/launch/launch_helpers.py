"""Helpers of the launch tests: two simulated nodes started side by side on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# In-process NeMo runs of earlier tests leave MASTER_PORT (still listened on by their store) and friends in
# this process's environment; the processes started here pick their own.
DIST_VARS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the distributed variables, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in DIST_VARS}, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(command: Callable[[int], list[str]], log_dir: Path, timeout: float) -> list[str]:
    """Start ``command(0)`` and ``command(1)`` at once, as the two machines would, and wait for both.

    Each writes to ``log_dir/node<rank>.log``; a hung rendezvous or save is killed with its process
    group when the wait ends. Raises AssertionError (with the tail of rank 0's log) unless both exit 0.

    Returns:
        The two logs.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"node{rank}.log" for rank in (0, 1)]
    procs = []
    for rank, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    command(rank),
                    cwd=REPO,
                    env=clean_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], f"exit codes {codes}; node 0:\n{texts[0][-4000:]}\nnode 1:\n{texts[1][-2000:]}"
    return texts
