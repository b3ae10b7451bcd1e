"""The launcher's exit status is the job's: a failed task, or a launch that would be refused, exits non-zero."""

from __future__ import annotations

import subprocess
import sys

from launch_helpers import REPO, clean_env

from launch.__main__ import first_error, main


def test_a_launched_job_that_fails_exits_non_zero_with_the_ranks_error_last(tmp_path):
    # The launcher plans under a writable GPT_OSS_WORK; the job's process gets one below a file, where no folder
    # can be made, so the job fails in its process (rank 0) after NeMo-Run has started it.
    (tmp_path / "a_file").touch()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            f"+cluster.env.GPT_OSS_WORK={tmp_path / 'a_file' / 'work'}",
            "trainer.max_steps=1",
            "export.enabled=false",
        ],
        cwd=REPO,
        env=clean_env(GPT_OSS_WORK=str(tmp_path / "work"), NEMORUN_HOME=str(tmp_path / "nemo_run")),
        capture_output=True,
        text=True,
        timeout=600,
        input="",
    )
    assert "finished: FAILED" in done.stdout + done.stderr  # NeMo-Run's own verdict
    assert done.returncode == 1, done.stderr[-3000:]
    tail = done.stderr.rstrip().splitlines()
    report = next(i for i, line in enumerate(tail) if line.startswith("the job train finished FAILED"))
    assert "rank 0's first error (" in tail[report] and tail[report].endswith("/0/stderr.log):")
    assert tail[-1].startswith("NotADirectoryError: [Errno 20] Not a directory"), tail[-5:]
    assert str(tmp_path / "a_file") in tail[-1]


def test_a_dry_run_of_a_refused_launch_exits_non_zero(capsys):
    assert main(["cluster=spark_pair", "cluster.nccl.ib_hca=[rocep1s0f1]", "--dry-run"]) == 1
    out, err = capsys.readouterr()
    assert "# a real launch stops here:" in out and "fewer than two RDMA devices" in err
    assert main(["parallel.expert_model_parallel_size=3", "--dry-run"]) == 1
    assert "expert_model_parallel_size=3" in capsys.readouterr().err


def test_a_dry_run_that_would_launch_exits_zero(capsys):
    assert main(["cluster=spark_pair", "--preflight", "--dry-run"]) == 0
    # The preflight needs only the executor: a training problem does not stop it.
    assert main(["parallel.expert_model_parallel_size=3", "--preflight", "--dry-run"]) == 0


def test_first_error_is_the_end_of_the_first_traceback():
    log = "\n".join(
        [
            "FutureWarning: pynvml is deprecated",
            "  import pynvml",
            "Traceback (most recent call last):",
            '  File "x.py", line 3, in f',
            "    os.mkdir(path)",
            "NotADirectoryError: [Errno 20] Not a directory: '/x'",
            "",
            "Traceback (most recent call last):",
            '  File "y.py", line 1, in g',
            "RuntimeError: a later error on the way out",
        ]
    )
    assert first_error(log) == "  at: os.mkdir(path)\nNotADirectoryError: [Errno 20] Not a directory: '/x'"
    # An error raised as SystemExit("message") prints the message alone; warnings are left out.
    log = "x.py:1: FutureWarning: old\n  import y\nthe config cannot run:\n  - data.seq_length=8 is too short"
    assert first_error(log) == "the config cannot run:\n  - data.seq_length=8 is too short"
