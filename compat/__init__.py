"""Everything that changes upstream behaviour, at the bottom of the project's dependency graph.

- `compat.versions`: the version gate. Importing this package checks the installed nemo_toolkit,
  megatron-core, transformers, torch (without CUDA) and transformer_engine (when present) against the versions
  the patches were verified on, and refuses others with the fix (`compat.versions.VersionMismatch`).
- `compat.cpu`: the measures that run the NeMo / megatron-core path without CUDA (off on a GPU).
- `compat.upstream`: fixes of NeMo defects that hit every device (resume, multi-process saves).
- `compat.private`: the private megatron-core / torch helpers the streaming checkpoint writer builds on, each
  checked for presence and signature.

Upstream start-up warnings that are not ours to fix are filtered here, each by its message and module.

Every patch names the upstream file:line it addresses; all were verified on the versions in
`compat.versions.VERIFIED` (nemo_toolkit 2.7.3, megatron-core 0.15.3, transformers 4.57, torch 2.13.0).
Nothing here imports another package of the project.

Examples:
    python -c "import compat; print(compat.versions.report())"
"""

import warnings

# torch imports `pynvml`, a deprecated shim that nvidia-resiliency-ext requires and nothing of this project uses;
# it warns on every start. Filtered here, once, by its message and module only (torch is imported after this).
warnings.filterwarnings("ignore", "The pynvml package is deprecated", FutureWarning, r"torch\.cuda")

from compat import versions  # noqa: E402

versions.check()
