"""What `make finetune` shows: the stages, a progress bar and the summary on the console; the logs of NeMo,
megatron-core and Lightning in ``<run_dir>/train.log``; the loss curve as a PNG beside it.

Both tests start a fresh Python, as the command line does: the routing is of the process's file descriptors
1 and 2, which pytest's own capture would otherwise stand in for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BAR = re.compile(r"^\s+training \d+/\d+ \|")  # a state of the progress bar (tqdm redraws it with \r)
# Upstream start-up lines that used to fill the console: NeMo's prefix, megatron's parallel groups, Lightning's
# device report, OneLogger, warnings.
UPSTREAM = ("[NeMo ", "megatron_init", "data parallel group", "GPU available", "OneLogger", "Warning")


def _own_env() -> dict[str, str]:
    """This environment without the rendezvous variables the in-process NeMo import of `tiny_nemo` left set (its
    port is still held by this process)."""
    from recipes.finetune import _LAUNCH_VARS

    return {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("TORCHELASTIC")}


def test_finetune_console_shows_stages_bar_and_summary_and_logs_the_rest(tmp_path, tiny_hf, tiny_nemo):
    """`python -m recipes.finetune trainer.max_steps=4` (the default path, shortened): it used to stop inside
    Lightning ("val_check_interval (10) must be less than or equal to the number of the training batches
    (4)"), and it printed ~366 lines, almost all of them upstream start-up logs."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.finetune",
            f"work_dir={tmp_path}",
            f"model.hf_path={tiny_hf}",
            f"model.nemo_path={tiny_nemo}",
            "trainer.max_steps=4",
            "run_id=console",
        ],
        cwd=REPO,
        env=_own_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    lines = console.splitlines()  # also splits the progress bar's \r redraws
    bar = [line for line in lines if BAR.match(line)]
    rest = [line for line in lines if not BAR.match(line)]
    stages = [int(m.group(1)) for line in rest if (m := re.match(r"^\[(\d)/6\] ", line))]
    assert stages == [1, 2, 3, 4, 5, 6], console
    assert "note: a run of 4 steps validates and checkpoints at its end" in console
    assert any("4/4" in line and "loss " in line and "tok/s" in line for line in bar), bar
    assert len(rest) <= 40, "\n".join(rest)
    assert not [line for line in rest if any(u in line for u in UPSTREAM)], "\n".join(rest)

    run_dir = tmp_path / "runs" / "gpt_oss_tiny-none" / "console"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["losses"]) == 4
    assert "step=3" in Path(summary["checkpoint"]).name
    assert summary["train_log"] == str(run_dir / "train.log") and f"train_log: {run_dir}/train.log" in console
    log = (run_dir / "train.log").read_text()
    # NeMo's (its own prefix), megatron-core's parallel state and Lightning's device report are all there
    assert "[NeMo I" in log and "Rank 0 has data parallel group" in log and "GPU available: False" in log
    assert not (run_dir / "run_0").exists()  # NeMo moves an earlier run's files there, never this run's log
    png = run_dir / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


ROUTING = textwrap.dedent(
    """
    import logging, os, sys
    from pathlib import Path
    from recipes.finetune import routed_output, say

    log, verbose = Path(sys.argv[1]), sys.argv[2] == "verbose"
    logging.getLogger("upstream").addHandler(logging.StreamHandler(sys.stdout))  # as Hydra's console handler
    with routed_output(log, verbose=verbose):
        print("python chatter")
        os.write(2, b"C-level chatter\\n")
        subprocess_line = "import sys; print('child chatter')"
        os.system(f"{sys.executable} -c \\"{subprocess_line}\\"")
        logging.getLogger("upstream").warning("an upstream warning")
        logging.getLogger("upstream").error("an upstream error")
        say("our own line")
        raise RuntimeError("boom")
    """
)


def _route(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / f"{mode}.log"
    proc = subprocess.run(
        [sys.executable, "-c", ROUTING, str(log), mode], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    return proc, log.read_text()


def test_routed_output_keeps_our_lines_errors_and_tracebacks_on_the_console(tmp_path):
    proc, log = _route(tmp_path, "quiet")
    assert proc.returncode != 0
    for chatter in ("python chatter", "C-level chatter", "child chatter", "an upstream warning"):
        assert chatter in log and chatter not in proc.stdout + proc.stderr, chatter
    assert "our own line" in proc.stdout and "our own line" not in log
    # a logged error is shown as well as kept; an exception leaves with its traceback on the console
    assert "ERROR (upstream): an upstream error" in proc.stdout and "an upstream error" in log
    assert "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr

    verbose, log = _route(tmp_path, "verbose")
    for chatter in ("python chatter", "C-level chatter", "child chatter", "an upstream warning"):
        assert chatter in log and chatter in verbose.stderr, chatter
