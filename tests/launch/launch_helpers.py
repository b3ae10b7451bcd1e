"""Helpers of the launch tests: a workflow started as a user starts it, its summary, and two simulated nodes
started side by side on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
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


def run_module(args: list[str], work: Path, nemorun_home: Path, timeout: float = 900) -> None:
    """``python -m <args>`` in the repository, its outputs under ``work`` (GPT_OSS_WORK) and NeMo-Run's under
    ``nemorun_home``; fails the test with the end of its output when it exits non-zero.

    Examples:
        run_module(["launch", "cluster.devices_per_node=2", "run_id=tp"], tmp_path / "work", tmp_path / "nr")
    """
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=clean_env(GPT_OSS_WORK=str(work), NEMORUN_HOME=str(nemorun_home)),
        capture_output=True,
        text=True,
        timeout=timeout,
        input="",  # NeMo-Run's LocalTunnel forwards stdin to the shell commands it runs
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


def read_summary(work: Path, run_name: str, run_id: str) -> dict:
    """The summary.json a finetune run writes in ``<work>/runs/<run_name>/<run_id>``."""
    return json.loads((work / "runs" / run_name / run_id / "summary.json").read_text())


# What torch's TCPStore says when the rendezvous port was taken after `free_port` checked it.
ADDRESS_IN_USE = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)


def _ephemeral_start() -> int:
    """The first port of the range the kernel hands out by itself (bind to port 0, outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to now, chosen below the kernel's ephemeral range.

    A port from ``bind(0)`` lies in the ephemeral range, which the kernel keeps handing out (to every outgoing
    connection, and to torch's and NeMo's own ``bind(0)``) between this check and the rendezvous' bind; a
    random port below that range is only taken by a process that names it. For the rare clash that remains,
    `run_two_nodes_on_a_free_port` starts again on another port.
    """
    top = _ephemeral_start()
    low = 20000 if top > 21000 else None  # a range starting low (1024) leaves nothing below it: use bind(0)
    for _ in range(100):
        port = random.SystemRandom().randrange(low, top) if low else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1 after 100 tries")


def run_two_nodes_on_a_free_port(
    command: Callable[[int, int], list[str]],
    log_dir: Path,
    timeout: float,
    attempts: int = 3,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Start ``command(rank, port)`` for both ranks at once on a `free_port`, with this process's environment
    (`clean_env`) plus ``env``; when the rendezvous finds the port taken (EADDRINUSE in a log), both nodes start
    again on another one, up to ``attempts`` times in all.

    Examples:
        run_two_nodes_on_a_free_port(lambda rank, port: [torchrun, f"--node_rank={rank}",
            f"--master_port={port}", ...], tmp_path / "logs", timeout=180)
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        codes, texts = _start_two_nodes(
            lambda rank, port=port: command(rank, port), log_dir, timeout, env or {}
        )
        if codes == [0, 0] or attempt == attempts or not any(ADDRESS_IN_USE.search(t) for t in texts):
            break
    assert codes == [0, 0], (
        f"exit codes {codes} on port {port} (attempt {attempt}); node 0:\n{texts[0][-4000:]}\n"
        f"node 1:\n{texts[1][-2000:]}"
    )
    return texts


def _start_two_nodes(
    command: Callable[[int], list[str]], log_dir: Path, timeout: float, env: dict[str, str]
) -> tuple[list[int], list[str]]:
    """Both processes at once; their exit codes and logs (subprocess.TimeoutExpired once ``timeout`` is out)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"node{rank}.log" for rank in (0, 1)]
    procs = []
    for rank, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    command(rank),
                    cwd=REPO,
                    env=clean_env(**env),
                    stdin=subprocess.DEVNULL,  # NeMo-Run's LocalTunnel forwards stdin to its shell commands
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
    return codes, [log.read_text() for log in logs]
