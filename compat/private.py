"""The private megatron-core and torch helpers the streaming checkpoint writer builds on, checked on import.

`convert.streaming_save` writes a ``torch_dist`` checkpoint a tensor at a time by reusing megatron-core's own
planning and file layout and torch's item writer. Those pieces are private (underscore names, or methods the
writer overrides) and may move or change between releases without notice. Each is declared here with the
parameters it had when verified (megatron-core 0.15.3, torch 2.13.0; see `compat.versions`), resolved from
this one place, and checked when this module is imported: a helper that has gone or whose parameters changed
stops the import with `PrivateHelperChanged`, naming it, instead of a wrong checkpoint later.

Examples:
    python -c "import compat.private as p; print(len(p.HELPERS), 'private helpers present as verified')"
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


class PrivateHelperChanged(RuntimeError):
    """A private upstream helper the streaming writer relies on is missing or has other parameters."""


@dataclass(frozen=True)
class Helper:
    module: str
    qualname: str
    params: tuple[str, ...] | None  # None: a constant or a class, checked for presence only

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"


_FS_ASYNC = "megatron.core.dist_checkpointing.strategies.filesystem_async"
_MCORE_TORCH = "megatron.core.dist_checkpointing.strategies.torch"
_TORCH_FS = "torch.distributed.checkpoint.filesystem"

HELPERS = (
    # The order in which the base writer deals items to files (filesystem_async.py, _split_by_size_and_type).
    Helper(_FS_ASYNC, "_item_size", ("item",)),
    Helper(_FS_ASYNC, "_split_by_size_and_type", ("bins", "items")),
    # The writer methods StreamingWriter overrides; the strategy calls them in this shape.
    Helper(_FS_ASYNC, "FileSystemWriterAsync.prepare_write_data", ("self", "plan", "planner")),
    Helper(_FS_ASYNC, "FileSystemWriterAsync.get_save_function_and_args", ("self",)),
    Helper(_FS_ASYNC, "FileSystemWriterAsync.retrieve_write_results", ("self",)),
    Helper(
        "megatron.core.dist_checkpointing.strategies.state_dict_saver",
        "save_state_dict_async_plan",
        (
            "state_dict",
            "storage_writer",
            "process_group",
            "coordinator_rank",
            "planner",
            "cached_ckpt_structure",
            "loaded_all_plans",
        ),
    ),
    Helper(
        _MCORE_TORCH,
        "_replace_state_dict_keys_with_sharded_keys",
        ("sharded_state_dict", "keep_only_main_replica"),
    ),
    Helper(
        _MCORE_TORCH,
        "mcore_to_pyt_state_dict",
        ("state_dict", "is_loading", "init_device", "load_legacy_1d_flatten_tensors"),
    ),
    Helper(
        _MCORE_TORCH,
        "TorchDistSaveShardedStrategy._get_save_and_finalize_callbacks",
        ("self", "writer", "save_state_dict_ret"),
    ),
    Helper(
        _MCORE_TORCH,
        "TorchDistSaveShardedStrategy.__init__",
        (
            "self",
            "backend",
            "version",
            "keep_only_main_replica",
            "thread_count",
            "cached_metadata",
            "separation_hint",
        ),
    ),
    Helper(_MCORE_TORCH, "MCoreSavePlanner.resolve_data", ("self", "write_item")),
    # torch's writer of one item into an open file (filesystem.py, _write_item).
    Helper(
        _TORCH_FS,
        "_write_item",
        ("transforms", "stream", "data", "write_item", "storage_key", "serialization_format"),
    ),
    Helper(_TORCH_FS, "DEFAULT_SUFFIX", None),
    Helper(_TORCH_FS, "SerializationFormat", None),
)


def resolve(helper: Helper):
    """The object ``helper`` names; raises `PrivateHelperChanged` when it is gone."""
    try:
        obj = importlib.import_module(helper.module)
        for part in helper.qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise PrivateHelperChanged(f"{helper.name} is gone ({e}); {_FIX}") from None
    return obj


def problems(helpers=HELPERS) -> list[str]:
    """One line per helper that is missing or whose parameters differ from the verified ones."""
    out = []
    for h in helpers:
        try:
            obj = resolve(h)
        except PrivateHelperChanged as e:
            out.append(str(e).split(";")[0])
            continue
        if h.params is not None:
            found = tuple(inspect.signature(obj).parameters)
            if found != h.params:
                out.append(f"{h.name}{_fmt(found)} changed (verified: {h.name}{_fmt(h.params)})")
    return out


def check(helpers=HELPERS) -> None:
    """Raise `PrivateHelperChanged` listing every helper that is missing or changed."""
    found = problems(helpers)
    if found:
        raise PrivateHelperChanged(
            "private upstream helpers of the streaming checkpoint writer (convert/streaming_save.py) changed:\n  "
            + "\n  ".join(found)
            + f"\n{_FIX}"
        )


def _fmt(params) -> str:
    return "(" + ", ".join(params) + ")"


_FIX = (
    "these were verified on megatron-core 0.15.3 and torch 2.13.0: install the pinned versions (`make setup`), "
    "or import without the streaming writer (python -m convert.import_hf ... --no-streaming)"
)

check()


def _named(qualname: str):
    return resolve(next(h for h in HELPERS if h.qualname == qualname))


item_size = _named("_item_size")
split_by_size_and_type = _named("_split_by_size_and_type")
save_state_dict_async_plan = _named("save_state_dict_async_plan")
replace_state_dict_keys_with_sharded_keys = _named("_replace_state_dict_keys_with_sharded_keys")
mcore_to_pyt_state_dict = _named("mcore_to_pyt_state_dict")
write_item = _named("_write_item")
DEFAULT_SUFFIX = _named("DEFAULT_SUFFIX")
SerializationFormat = _named("SerializationFormat")
