"""Build the environment from the project's own files: `make setup`.

On a fresh machine: a virtual environment in ``.venv`` with requirements.txt and requirements-dev.txt.
Inside an NGC NeMo container (``nemo.collections.llm`` already importable by this Python): only the pinned
packages that are missing are installed, into that Python, so the container's CUDA stack stays untouched.
Either way the project itself is installed in editable mode without dependencies.

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


def missing(lines: list[str]) -> list[str]:
    """Requirements whose distribution is not installed at all (versions already present are kept)."""
    out = []
    for line in lines:
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(line)
    return out


def pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def nemo_present() -> bool:
    try:
        import nemo.collections.llm  # noqa: F401
    except Exception:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="virtual environment to create or update")
    args = parser.parse_args()
    if nemo_present():
        todo = missing(requirement_lines())
        print(
            f"NeMo is importable by {sys.executable}: installing only what is missing ({len(todo)} package(s))."
        )
        if todo:
            pip(sys.executable, "install", *todo)
        pip(sys.executable, "install", "--no-deps", "--no-build-isolation", "-e", ".")
        return
    env = Path(args.venv)
    python = env / "bin" / "python"
    if not python.exists():
        print(f"creating {env}", flush=True)
        venv.create(env, with_pip=True)
    pip(str(python), "install", "--upgrade", "pip")
    pip(str(python), "install", *[x for r in REQUIREMENTS for x in ("-r", str(r))])
    pip(str(python), "install", "--no-deps", "-e", ".")
    print(f"\nReady: {python}. Next: make test, make finetune")


if __name__ == "__main__":
    main()
