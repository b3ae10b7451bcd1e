"""Launch fine-tuning (or the link preflight) on the configured cluster, after every check has passed.

Composes ``conf/plan.yaml`` (the fine-tuning config plus an optional ``experiment``), then: validate (the
recipe's own checks) -> memory plan (refuses what cannot fit) -> build the NeMo recipe (every override checked
against NeMo's signatures) -> hand ``python -m launch.train <the same overrides>`` to the cluster's NeMo-Run
executor. ``--dry-run`` stops before launching and prints exactly what would run: the checks, the environment,
the torchrun command of every node, the sbatch script or the container command. It does not import NeMo.

The exit status is the job's: 0 when every task succeeded (or, for Slurm, once the job is submitted), 1 when
the launch is refused (a ``--dry-run`` of such a launch too) or when any task failed; then the failing rank's
first error, read from its log, is printed last.

Examples:
    python -m launch experiment=spark_20b_lora --dry-run
    python -m launch experiment=spark_pair_20b_lora --node-rank 0          # on the first Spark
    python -m launch experiment=spark_pair_20b_lora --node-rank 1          # on the second
    python -m launch cluster=spark_pair --preflight --node-rank 0          # all-reduce bus bandwidth only
    python -m launch experiment=slurm_120b_sft cluster.slurm.account=me --dry-run   # prints the sbatch script
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from io import StringIO
from pathlib import Path

from omegaconf import DictConfig

from launch import executors
from recipes import plan as planner


def checks(cfg: DictConfig, node_rank: int) -> tuple[str, list[str]]:
    """The memory table and every problem found by the recipe's validation, the planner and the executor.

    The layout rules that both the recipe and the planner enforce (`recipes.plan.layout_problems`) come from
    ``validate`` alone, so each problem is listed once.
    """
    from recipes.finetune import ConfigError, validate

    found = []
    try:
        validate(cfg)
    except ConfigError as e:
        found += str(e).splitlines()[1:]
    out = StringIO()
    try:
        planner.check(cfg, out=out, rules=False)
    except planner.PlanError as e:
        if cfg.plan.enforce:
            found += [f"  {line}" for line in str(e).splitlines()]
    found += [f"  - {p}" for p in executors.problems(cfg, node_rank)]
    return out.getvalue(), [line.removeprefix("  ") for line in found]


def experiment(cfg: DictConfig, node_rank: int):
    """A NeMo-Run experiment on the cluster's executor (add the task inside its ``with`` block)."""
    import nemo_run as run

    run.config.set_nemorun_home(
        os.environ.get("NEMORUN_HOME") or str(Path(cfg.work_dir, "nemo_run").resolve())
    )
    return run.Experiment(f"gpt-oss-{cfg.run_name}", executor=executors.executor(cfg, node_rank))


def add_task(exp, module: str, args: list[str]) -> None:
    exp.add(executors.task(module, args), name="train" if module == "launch.train" else "preflight")


def render(info) -> str:
    """What a NeMo-Run dry-run would start, as a shell reader sees it."""
    request = info.request
    if hasattr(request, "role_params"):  # local scheduler: one process (torchrun) per replica
        lines = []
        for replicas in request.role_params.values():
            for replica in replicas:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(replica.env.items()))
                lines.append(f"env {env} \\\n  {' '.join(replica.args)}")
        return "\n".join(lines)
    if hasattr(request, "containers"):  # docker
        lines = []
        for c in request.containers:
            env = " ".join(f"-e {k}={shlex.quote(str(v))}" for k, v in sorted(c.extra_env.items()))
            volumes = " ".join(f"-v {v}" for v in c.executor.volumes)
            lines.append(
                f"docker run --gpus all --ipc={c.executor.ipc_mode} {volumes} {env} "
                f"{c.executor.container_image} \\\n  {' '.join(c.command)}"
            )
        return "\n".join(lines)
    return str(request)  # slurm: the sbatch script


def dry_run(cfg: DictConfig, module: str, args: list[str], node_rank: int = 0) -> str:
    """Everything a launch would do, as text, without starting anything.

    Examples:
        python -m launch experiment=spark_pair_120b_lora_fp8 --node-rank 1 --dry-run
    """
    return _dry_run(cfg, module, args, node_rank)[0]


def refusals(found: list[str], cfg: DictConfig, node_rank: int, preflight: bool) -> list[str]:
    """What stops a real launch: every problem for training; the preflight needs only a buildable executor."""
    return [f"- {p}" for p in executors.problems(cfg, node_rank)] if preflight else found


def _dry_run(cfg: DictConfig, module: str, args: list[str], node_rank: int) -> tuple[str, list[str]]:
    """`dry_run`'s text and the problems found (a real launch of ``module`` would stop on `refusals`)."""
    table, found = checks(cfg, node_rank)
    kind = cfg.cluster.get("executor", "local")
    parts = [
        f"# dry run: {kind} executor, {cfg.cluster.num_nodes} node(s) x {cfg.cluster.devices_per_node} device(s)"
        + (f", this is node {node_rank}" if kind == "pair" else ""),
        table.rstrip(),
    ]
    if found:
        parts.append("# a real launch stops here:\n" + "\n".join(found))
    parts.append("# environment of every process:")
    parts += [f"{k}={v}" for k, v in sorted(executors.environment(cfg, node_rank).items())]
    if not executors.problems(cfg, node_rank):
        exp = experiment(cfg, node_rank)
        with exp:
            add_task(exp, module, args)
            exp.dryrun(log=False)
            info = exp.jobs[0]._dryrun_info  # what Job.launch(dryrun=True) computed
        title = {"slurm": "sbatch script", "docker": "container"}.get(kind, "command")
        parts.append(f"# {title}:\n{render(info)}")
        if kind == "pair":
            other = 1 - node_rank
            parts.append(
                f"# then on the other node: python -m launch {' '.join(map(shlex.quote, args))} "
                f"--node-rank {other}"
            )
    return "\n".join(parts) + "\n", found


TRACEBACK = "Traceback (most recent call last):"
# The line that ends a traceback: ``ValueError: ...``, ``torch.OutOfMemoryError: ...``, a bare ``KeyError``.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*")
ROOT_CAUSE_RANK = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)", re.DOTALL)


def first_error(text: str) -> str | None:
    """The first error in a process's stderr: the exception line ending its first traceback (with the line
    that raised it), or, for an error without a traceback (``SystemExit("message")``), the last lines."""
    lines = text.splitlines()
    if TRACEBACK in lines:
        start = lines.index(TRACEBACK)
        for i in range(start + 1, len(lines)):
            if EXCEPTION_LINE.match(lines[i]):
                end = i + 1  # a multi-line message continues until a blank line or the next traceback
                while end < len(lines) and lines[end].strip() and not lines[end].startswith(TRACEBACK):
                    end += 1
                raised = [
                    x.strip() for x in lines[start:i] if x.strip() and not x.lstrip().startswith("File ")
                ]
                return "\n".join(([f"  at: {raised[-1]}"] if raised[-1:] else []) + lines[i:end])
    kept, after_warning = [], False
    for line in lines:  # a Python warning is its line and the indented source line under it
        if not line.strip() or "Warning: " in line or (after_warning and line.startswith("  ")):
            after_warning = "Warning: " in line
            continue
        after_warning = False
        kept.append(line)
    return "\n".join(kept[-10:]) or None


def failure_report(job_dir: str | Path) -> str:
    """The failing rank's first error, from the per-rank logs torchrun writes under the job's folder
    (``.../torchelastic/<job>/attempt_<n>/<local rank>/stderr.log``); the root-cause rank torchrun names comes
    first, then any other rank with an error."""
    job_dir = Path(job_dir)
    logs = sorted(job_dir.glob("**/torchelastic/**/attempt_*/*/stderr.log"), key=lambda p: str(p))
    if not logs:
        return f"no per-rank log under {job_dir}"
    root = None
    for combined in job_dir.glob("**/combined.log"):
        m = ROOT_CAUSE_RANK.search(combined.read_text(errors="replace"))
        if m:
            root = m.group(1)
    logs.sort(key=lambda p: (p.parent.name != root, p.parent.parent.name, int(p.parent.name)))
    for log in logs:
        error = first_error(log.read_text(errors="replace"))
        if error:
            return f"rank {log.parent.name}'s first error ({log}):\n{error}"
    return f"no error found in the per-rank logs {', '.join(map(str, logs))}"


def with_run_id(overrides: list[str], cfg: DictConfig) -> list[str]:
    """The job's overrides with this launch's ``run_id`` fixed, so every process (on every node) writes to and
    resumes from the same run folder; each would otherwise take its own start time."""
    if any(o.startswith("run_id=") or o.startswith("run_dir=") for o in overrides):
        return overrides
    return [*overrides, f"run_id={cfg.run_id}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch", description=__doc__.split("\n\n")[0], epilog="Hydra overrides: key=value ..."
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run; start nothing")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (the pair executor)")
    parser.add_argument("--preflight", action="store_true", help="run the all-reduce preflight instead")
    parser.add_argument(
        "--preflight-args", default="--size-mb 256 --iters 10", help="arguments of python -m launch.preflight"
    )
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option(s) {bad}; Hydra overrides are key=value")
    cfg = planner.compose(overrides)
    if args.preflight:
        module, job_args = "launch.preflight", shlex.split(args.preflight_args)
    else:
        module, job_args = "launch.train", with_run_id(overrides, cfg)
    if args.dry_run:
        text, found = _dry_run(cfg, module, job_args, args.node_rank)
        print(text, end="")
        refused = refusals(found, cfg, args.node_rank, args.preflight)
        if refused:
            print("a real launch would be refused:\n" + "\n".join(refused), file=sys.stderr)
        return 1 if refused else 0
    table, found = checks(cfg, args.node_rank)
    print(table, end="")
    refused = refusals(found, cfg, args.node_rank, args.preflight)
    if refused:
        print("the launch cannot start:\n" + "\n".join(refused), file=sys.stderr)
        return 1
    if not args.preflight:
        if (Path(cfg.model.hf_path) / "config.json").exists():
            from recipes.finetune import build

            build(cfg)  # every recipe override is checked against NeMo's signatures before anything starts
        else:  # validate() let it through: the tiny model, which the job builds before training
            print(f"the job builds the tiny model at {cfg.model.hf_path}; the recipe is checked there")
    exp = experiment(cfg, args.node_rank)
    with exp:
        add_task(exp, module, job_args)
        kind = cfg.cluster.get("executor", "local")
        exp.run(detach=kind == "slurm", tail_logs=kind != "slurm")
    if kind == "slurm":
        return 0  # submitted; sbatch's own status is the job's
    return exit_status(exp.jobs[0])


def exit_status(job) -> int:
    """0 when the waited-for job SUCCEEDED; else 1, with the failing rank's first error printed last."""
    from torchx.specs.api import AppState

    if job.state == AppState.SUCCEEDED:
        return 0
    sys.stdout.flush()
    print(
        f"\nthe job {job.id} finished {job.state.name}; {failure_report(job.executor.job_dir)}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
