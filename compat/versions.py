"""The version gate: the upstream versions every patch in `compat` was verified on, checked before any is used.

The patches in this package (`compat.cpu`, `compat.upstream`, `compat.private`) name upstream files and line
numbers of one set of releases. Applied to other code they can do anything from nothing to silently wrong
numbers, so importing `compat` compares what is installed with `VERIFIED` and refuses a mismatch, naming the
versions found, the versions expected and the fix.

What is checked, and why:

- nemo_toolkit, megatron-core, transformers: always (the upstream fixes, the connectors and the streaming
  checkpoint writer depend on them on every device).
- torch: where CUDA is absent, because that is where `compat.cpu` patches ``torch.cuda`` and ``torch.Tensor``.
  With CUDA those patches are off and the GPU build of torch is the one the container carries; the private
  torch helpers the streaming writer uses are then checked by their signatures (`compat.private`).
- transformer_engine: when installed. Nothing in `compat` patches it; it is held to the release that the
  named container image carries (`NGC_BASE_IMAGE`), the one the GPU path is meant to run with.

The override ``GPT_OSS_ALLOW_UNVERIFIED=1`` lets an expert proceed at their own risk: the mismatch is printed
as a warning instead, and `report()` (kept in every fine-tuning run's ``summary.json`` under ``stack``)
records that the override was used and what was found.

Examples:
    python -c "import compat; print(compat.versions.report())"   # the installed stack against VERIFIED
    GPT_OSS_ALLOW_UNVERIFIED=1 python -m recipes.finetune   # proceed anyway; recorded in summary.json
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

OVERRIDE_ENV = "GPT_OSS_ALLOW_UNVERIFIED"

# Distribution -> the versions the patches were verified on. requirements.txt pins the same (a test holds
# them equal). transformer_engine: see the module docstring.
VERIFIED = {
    "nemo_toolkit": "==2.7.3",
    "megatron-core": "==0.15.3",
    "transformers": "~=4.57.0",
    "torch": "==2.13.0",
    "transformer_engine": "~=2.9.0",
}

# The NGC image the project's own image (Dockerfile) builds on. No NGC release carries nemo_toolkit 2.7.3 with
# megatron-core 0.15.3: 25.11 carries NeMo 2.6.0, megatron-core 0.15.0 (dev), Transformer Engine 2.9 and
# torch 2.9; 26.02 carries NeMo 2.7.0 with megatron-core 0.16, which breaks NeMo 2.7.3's checkpoint IO.
# The image therefore starts from 25.11 and installs the pinned NeMo, megatron-core and transformers over it,
# keeping the image's CUDA build of torch and its Transformer Engine.
NGC_BASE_IMAGE = "nvcr.io/nvidia/nemo:25.11"
# The project's own image, built by `make image` from the Dockerfile; the container and Slurm profiles run it.
PROJECT_IMAGE = "gpt-oss-nemo:latest"
FIX = (
    "install the pinned versions (`make setup`, which reads requirements.txt), or run the project's own image "
    f"(`make image` builds {PROJECT_IMAGE} on {NGC_BASE_IMAGE} with those versions); "
    f"to proceed anyway at your own risk set {OVERRIDE_ENV}=1 (recorded in the run's summary)"
)


class VersionMismatch(RuntimeError):
    """Installed upstream versions differ from those the compatibility patches were verified on."""


@dataclass(frozen=True)
class Finding:
    package: str
    found: str | None  # None: not installed
    expected: str

    @property
    def ok(self) -> bool:
        if self.found is None:
            return False
        try:
            return SpecifierSet(self.expected).contains(Version(self.found), prereleases=True)
        except InvalidVersion:
            return False

    def line(self) -> str:
        return f"{self.package} {self.found or 'not installed'} (verified: {self.expected})"


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def checked_packages(cuda: bool | None = None, te_present: bool | None = None) -> list[str]:
    """The distributions the gate checks on this machine (see the module docstring)."""
    if te_present is None:
        te_present = importlib.util.find_spec("transformer_engine") is not None
    if cuda is None:
        cuda = _cuda()
    names = ["nemo_toolkit", "megatron-core", "transformers"]
    if not cuda:
        names.append("torch")
    if te_present:
        names.append("transformer_engine")
    return names


def findings(found: dict[str, str | None] | None = None, **which) -> list[Finding]:
    """Each checked distribution with its installed version (``found`` overrides what is looked up)."""
    found = found or {}
    return [
        Finding(p, found[p] if p in found else installed(p), VERIFIED[p]) for p in checked_packages(**which)
    ]


def override_requested() -> bool:
    return os.environ.get(OVERRIDE_ENV, "").strip().lower() in ("1", "true", "yes")


_REPORT: dict | None = None


def check(found: dict[str, str | None] | None = None, **which) -> dict:
    """Compare the installed stack with `VERIFIED`; refuse a mismatch unless the override is set.

    Args:
        found: Distribution -> version to use instead of the installed one (tests fake a stack with it).
        **which: ``cuda`` / ``te_present`` as in `checked_packages`.

    Returns:
        The report (also kept for `report`): ``versions``, ``mismatches`` and ``override_used``.

    Raises:
        VersionMismatch: A checked distribution differs and the override is not set; the message lists the
            versions found, the versions expected and the fix.

    Examples:
        python -c "import compat.versions as v; print(v.check())"
    """
    global _REPORT
    result = findings(found, **which)
    bad = [f for f in result if not f.ok]
    report = {
        "versions": {f.package: f.found for f in result},
        "mismatches": [f.line() for f in bad],
        "override_used": bool(bad) and override_requested(),
    }
    if bad and not report["override_used"]:
        raise VersionMismatch(
            "the installed stack is not the one the compatibility patches (compat/) were verified on:\n  "
            + "\n  ".join(f.line() for f in bad)
            + f"\nfix: {FIX}"
        )
    if bad:
        print(
            f"warning: {OVERRIDE_ENV} is set: proceeding with unverified versions ("
            + "; ".join(f.line() for f in bad)
            + ")",
            file=sys.stderr,
        )
    _REPORT = report
    return report


def report() -> dict:
    """What the gate found when `compat` was imported (checked now if it was not)."""
    return dict(_REPORT) if _REPORT is not None else check()
