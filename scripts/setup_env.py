"""Build the environment from the project's own files: `make setup`.

On a fresh machine: a virtual environment in ``.venv`` with requirements.txt and requirements-dev.txt.
Inside an NGC NeMo container (``nemo.collections.llm`` already importable by this Python): into that Python,
the packages of the version gate (`compat.versions`: nemo_toolkit, megatron-core, transformers) are brought to
their pins when the image carries other versions, every other pinned package is installed only when missing,
and the image's CUDA build of torch and its Transformer Engine are held where they are (pip constraints).
Either way the project itself is installed in editable mode without dependencies, and the version gate runs
last in a fresh interpreter: a stack other than the verified one fails the setup with the versions and the fix.
Only then is the stamp written (``.venv/.stamp``, in a container too, where ``.venv`` holds nothing else): the
Makefile's targets depend on it, so a missing environment is built, and one older than requirements*.txt,
pyproject.toml or this script is brought up to date, before they run.

Examples:
    python3 scripts/setup_env.py            # what `make setup` runs
    python3 scripts/setup_env.py --venv .venv-other
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]


def requirement_lines() -> list[str]:
    lines = []
    for path in REQUIREMENTS:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


# Brought to their pins inside a container (the patches in compat/ were verified on these); see compat/versions.py.
GATED = ("nemo_toolkit", "megatron-core", "transformers")
# The container's own builds, never replaced: CUDA torch and the Transformer Engine compiled against it.
HELD = ("torch", "transformer_engine", "transformer-engine")


def _name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(lines: list[str]) -> list[str]:
    """Requirements whose distribution is not installed at all (versions already present are kept), plus the
    gated ones whose installed version is not their pin."""
    from packaging.requirements import Requirement

    out = []
    for line in lines:
        name, found = _name(line), _version(_name(line))
        if found is None:
            out.append(line)
        elif name in GATED and not Requirement(line).specifier.contains(found, prereleases=True):
            out.append(line)
    return out


def held_constraints() -> list[str]:
    """pip constraints that keep the container's own torch / Transformer Engine builds."""
    return [f"{n}=={v}" for n in HELD if (v := _version(n)) is not None]


def gate(python: str) -> None:
    """The version gate of `compat` in a fresh interpreter (this one has the old versions loaded)."""
    print("+ version gate (compat/versions.py)", flush=True)
    result = subprocess.run([python, "-c", "import compat"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        err = result.stderr
        raise SystemExit(
            err[err.find("VersionMismatch") :] if "VersionMismatch" in err else err or "gate failed"
        )


def pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def write_stamp(stamp: Path, python: str) -> None:
    """Mark the environment as built from the current requirements (make compares the stamp's time)."""
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{python}\n")


def nemo_present() -> bool:
    try:
        import nemo.collections.llm  # noqa: F401
    except Exception:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="virtual environment to create or update")
    parser.add_argument(
        "--stamp", default=None, help="file written when the setup succeeded (default: <venv>/.stamp)"
    )
    args = parser.parse_args()
    stamp = Path(args.stamp or Path(args.venv) / ".stamp")
    if nemo_present():
        todo = [line for line in missing(requirement_lines()) if _name(line) not in HELD]
        print(
            f"NeMo is importable by {sys.executable}: installing what is missing or off its pin "
            f"({len(todo)} package(s)); holding {', '.join(held_constraints()) or 'nothing'}."
        )
        if todo:
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
                constraints.write("\n".join(held_constraints()) + "\n")
                constraints.flush()
                pip(sys.executable, "install", "-c", constraints.name, *todo)
        pip(sys.executable, "install", "--no-deps", "--no-build-isolation", "-e", ".")
        gate(sys.executable)
        write_stamp(stamp, sys.executable)
        return
    env = Path(args.venv)
    python = env / "bin" / "python"
    if not python.exists():
        print(f"creating {env}", flush=True)
        venv.create(env, with_pip=True)
    pip(str(python), "install", "--upgrade", "pip")
    pip(str(python), "install", *[x for r in REQUIREMENTS for x in ("-r", str(r))])
    pip(str(python), "install", "--no-deps", "-e", ".")
    gate(str(python))
    write_stamp(stamp, str(python))
    print(f"\nReady: {python}. Next: make test, make finetune")


if __name__ == "__main__":
    main()
