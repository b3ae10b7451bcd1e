"""Save a megatron-core ``torch_dist`` checkpoint whose tensors are produced one at a time while it is written.

NeMo saves a model by asking megatron-core for its sharded state dict and handing it to the ``torch_dist``
strategy, whose writer (``FileSystemWriterAsync.prepare_write_data``) first resolves every tensor and clones
every view, then writes: the whole model, plus copies, is in host memory at once. Here the model is built on
torch's ``meta`` device (shapes, no storage) and NeMo's save runs unchanged (sharded state dict, planning,
``common.pt``, ``metadata.json``, the ``.metadata`` index and the ``context/`` folder), except that the strategy
writes with `StreamingWriter`: each tensor item is produced by its source function (`StreamingPlanner`) only
when the writer reaches it, written, and dropped. The files have the same names, items, order and bytes as
the strategy's own writer would give them for a materialised model with the same values.

A source gives the whole tensor of one parameter (``sources`` is keyed like ``targets``, the meta state dict
under the keys of the sharded state dict). A parameter saved as several items (megatron-core stores the gated
fc1 weight as two halves) is read once when its items come one after another, as the writer's size order puts
them; otherwise it is read again. Memory is bounded by the largest parameter plus the item being written,
whatever the number of layers.

Examples:
    python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out /tmp/tiny-nemo  # streams by default
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, is_main_replica
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner, TorchDistSaveShardedStrategy
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from compat.private import (
    DEFAULT_SUFFIX,
    SerializationFormat,
    item_size,
    mcore_to_pyt_state_dict,
    replace_state_dict_keys_with_sharded_keys,
    save_state_dict_async_plan,
    split_by_size_and_type,
    write_item,
)
from convert.gpt_oss import ConversionError

Source = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Chunk:
    """Where one saved item lies in its parameter: ``torch.as_strided(param, size, stride, offset)``."""

    name: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def use_streaming_save(strategy, sources: Mapping[str, Source], targets: Mapping[str, torch.Tensor]) -> None:
    """Make a NeMo ``MegatronStrategy`` write ``targets`` (meta tensors) from ``sources`` at its next save.

    The save is made synchronous: the writer reads the sources, so it must run in this process, while NeMo's
    asynchronous save (the default of the trainer ``nemo_setup`` builds) writes from a forked one. It is
    switched after construction, so the trainer recorded in ``context/io.json`` is the one NeMo records for
    any import. The save strategy NeMo chose stays in place (its fully parallel wrapper, if any, keeps
    wrapping); only its ``torch_dist`` base is replaced by a `StreamingSaveStrategy` with the same settings.

    Args:
        strategy: ``trainer.strategy`` of the trainer that will save the model.
        sources: Sharded-state-dict key -> function returning that parameter's full tensor.
        targets: The same keys -> the model's (meta) tensors, for shapes and dtypes.
    """
    from nemo.lightning.io.pl import MegatronCheckpointIO

    checkpoint_io = strategy.unwrapped_checkpoint_io
    if not isinstance(checkpoint_io, MegatronCheckpointIO):
        raise ConversionError(
            f"a streaming save writes through NeMo's MegatronCheckpointIO, not {type(checkpoint_io).__name__}"
        )
    strategy.async_save = checkpoint_io.async_save = False
    strategy.checkpoint_io = checkpoint_io
    chosen = checkpoint_io.save_sharded_strategy
    base = getattr(chosen, "base_strategy", chosen)
    if type(base) is not TorchDistSaveShardedStrategy:
        raise ConversionError(
            f"a streaming save writes the torch_dist format; NeMo chose {type(base).__name__} "
            "(import with streaming=False, --no-streaming, to save a model built in memory)"
        )
    streaming = StreamingSaveStrategy(
        sources,
        targets,
        backend=base.backend,
        version=base.version,
        keep_only_main_replica=base.keep_only_main_replica,
        thread_count=base.thread_count,
    )
    if chosen is base:
        # MegatronCheckpointIO.save_sharded_strategy caches its choice here (nemo/lightning/io/pl.py:370-375).
        checkpoint_io._save_sharded_strategy = streaming
    else:
        chosen.base_strategy = streaming


class StreamingSaveStrategy(TorchDistSaveShardedStrategy):
    """megatron-core's ``torch_dist`` save strategy for a model on the meta device, fed by source functions.

    ``async_save`` is the base one (translate to torch sharded tensors, plan, write, finalise) with
    `StreamingPlanner` and `StreamingWriter`. Before anything is planned it maps every saved item of a meta
    tensor to its parameter and checks that sources and model agree.
    """

    def __init__(self, sources: Mapping[str, Source], targets: Mapping[str, torch.Tensor], **kwargs):
        super().__init__(**kwargs)
        self.sources, self.targets = sources, targets

    def async_save(self, sharded_state_dict, checkpoint_dir):
        chunks = self.chunks(sharded_state_dict)
        sharded_state_dict, _, _ = replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, self.keep_only_main_replica
        )
        writer = StreamingWriter(checkpoint_dir, thread_count=self.thread_count)
        planner = StreamingPlanner(
            chunks,
            self.sources,
            self.targets,
            dedup_replicated_tensors=not self.keep_only_main_replica,
            flatten_state_dict=False,
        )
        plan = save_state_dict_async_plan(
            mcore_to_pyt_state_dict(sharded_state_dict, False), writer, None, 0, planner=planner
        )
        return self._get_save_and_finalize_callbacks(writer, plan[0])

    def chunks(self, sharded_state_dict) -> dict[tuple[str, tuple[int, ...]], Chunk]:
        """``(checkpoint key, global offset)`` -> `Chunk` for every saved item whose data is on the meta device.

        Raises:
            ConversionError: a meta tensor without a source, a source the model does not save, or a saved
                item that is not a plain view of its parameter.
        """
        chunks, no_source = {}, []
        for name, sh in _leaves(sharded_state_dict):
            if not isinstance(sh, ShardedTensor) or sh.data is None or sh.data.device.type != "meta":
                continue
            if self.keep_only_main_replica and not is_main_replica(sh.replica_id):
                continue
            if name not in self.sources:
                no_source.append(name)
                continue
            param, view = self.targets[name], sh.data
            extent = view.storage_offset() + sum(
                (n - 1) * s for n, s in zip(view.shape, view.stride(), strict=True)
            )
            if (
                sh.flattened_range is not None
                or not param.is_contiguous()
                or view.dtype != param.dtype
                or extent >= param.numel()
            ):
                raise ConversionError(f"{sh.key}: saved as {sh}, which is not a plain view of {name}")
            chunks[(sh.key, tuple(sh.global_offset))] = Chunk(
                name, tuple(view.shape), tuple(view.stride()), view.storage_offset()
            )
        unsaved = sorted(set(self.sources) - {c.name for c in chunks.values()})
        if no_source or unsaved:
            raise ConversionError(
                "the sources do not match the tensors the model saves:"
                + (f"\n  no source: {no_source[:8]}" if no_source else "")
                + (f"\n  not saved by the model: {unsaved[:8]}" if unsaved else "")
            )
        return chunks


class StreamingPlanner(MCoreSavePlanner):
    """megatron-core's save planner whose tensor items come from source functions when the writer asks.

    ``resolve_data`` reads the item's parameter from its source, checks its shape against the model, casts it
    to the model's dtype, and returns the item's part with a storage of its own size (the writer saves whole
    storages). The parameter is kept only while more of its items are due and they come next; everything else
    is freed as soon as it is written.
    """

    def __init__(self, chunks, sources, targets, **kwargs):
        super().__init__(**kwargs)
        self.chunks, self.sources, self.targets = chunks, sources, targets
        self._due = Counter(c.name for c in chunks.values())
        self._held: tuple[str, torch.Tensor] | None = None

    def resolve_data(self, write_item: WriteItem):
        chunk = self.chunks.get((write_item.index.fqn, tuple(write_item.index.offset or ())))
        if write_item.type == WriteItemType.BYTE_IO or chunk is None:
            data = super().resolve_data(write_item)
            if isinstance(data, torch.Tensor) and data.device.type == "meta":
                raise ConversionError(f"{write_item.index.fqn}: a meta tensor without a source")
            return data
        whole = self._parameter(chunk.name)
        # as_strided counts the offset from the start of the storage, which a source's tensor may share.
        part = torch.as_strided(whole, chunk.size, chunk.stride, whole.storage_offset() + chunk.offset)
        part = part.reshape(write_item.tensor_data.chunk.sizes)
        return part.clone() if part.untyped_storage().nbytes() != part.nbytes else part

    def _parameter(self, name: str) -> torch.Tensor:
        if self._held is not None and self._held[0] == name:
            whole = self._held[1]
        else:
            self._held = None  # freed before the next one is read
            whole = self.sources[name]()
            target = self.targets[name]
            if whole.shape != target.shape:
                raise ConversionError(f"{name}: source {tuple(whole.shape)} vs model {tuple(target.shape)}")
            # The dtype the model keeps the parameter in (norm weights stay float32 in a bf16 model), cast as
            # copying into the parameter would.
            whole = whole.to(target.dtype).contiguous()
        self._due[name] -= 1
        self._held = (name, whole) if self._due[name] > 0 else None
        return whole


class StreamingWriter(FileSystemWriterAsync):
    """megatron-core's ``torch_dist`` file writer, writing each tensor item as soon as it is resolved.

    Files, the split of items into them (``_split_by_size_and_type``) and the order within each file are
    the base writer's. The base resolves every item first (``prepare_write_data``) and writes from forked
    processes; this one writes in this process, the files side by side, the tensor items in the global
    order by decreasing size in which they were dealt to the files, resolving each just before it is
    written. Results are kept on the writer for the finalisation (no results queue).
    """

    def prepare_write_data(self, plan, planner) -> None:
        prefix = plan.storage_data.prefix
        buckets = [b for b in split_by_size_and_type(self.thread_count, plan.items) if b]
        names = [f"{prefix}{i}{DEFAULT_SUFFIX}" for i in range(len(buckets))]
        self.write_buckets = [
            (os.path.join(self.checkpoint_dir, n), n, b) for n, b in zip(names, buckets, strict=True)
        ]
        self.file_of = {id(item): i for i, bucket in enumerate(buckets) for item in bucket}
        # The order in which _split_by_size_and_type deals tensor items to the files: a stable sort of the
        # plan's order by decreasing size (one file: the plan's order). Each file gets its items in its order.
        tensors = [item for item in plan.items if item.type != WriteItemType.BYTE_IO]
        self.order = sorted(tensors, key=item_size, reverse=True) if self.thread_count > 1 else tensors
        for i, bucket in enumerate(buckets):
            mine = [item for item in self.order if self.file_of[id(item)] == i]
            if mine != [item for item in bucket if item.type != WriteItemType.BYTE_IO]:
                raise RuntimeError(f"{names[i]}: the write order does not follow megatron-core's file order")
        self.planner, self.results = planner, None

    def get_save_function_and_args(self):
        return (self.write, None, []) if self.write_buckets else (None, None, [])

    def write(self) -> None:
        """Write every item, resolving tensors one at a time; raises whatever a source raises."""
        results: list[list] = [[] for _ in self.write_buckets]
        with ExitStack() as stack:
            streams = [stack.enter_context(open(path, "wb")) for path, _, _ in self.write_buckets]

            def write(item: WriteItem) -> None:
                i = self.file_of[id(item)]
                data = self.planner.resolve_data(item)
                results[i].append(
                    write_item(
                        self.transforms,
                        streams[i],
                        data,
                        item,
                        self.write_buckets[i][1],
                        SerializationFormat.TORCH_SAVE,
                    )
                )

            for _, _, bucket in self.write_buckets:
                for item in bucket:
                    if item.type == WriteItemType.BYTE_IO:
                        write(item)
            for item in self.order:
                write(item)
            for stream in streams:
                stream.flush()
                os.fsync(stream.fileno())
        self.results = [r for rs in results for r in rs]

    def retrieve_write_results(self):
        return self.results


def _leaves(tree, name: str | None = None):
    """``(key, value)`` of every leaf of a nested state dict; list items carry the key of their list."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, k if isinstance(k, str) else name)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v, name)
    else:
        yield name, tree
