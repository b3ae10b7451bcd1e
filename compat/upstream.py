"""Fixes for NeMo 2.7.3 defects that hit multi-process runs and resumes on every device.

Unlike `compat.cpu`, these are applied on GPUs too: each fixes behaviour that is wrong whatever the hardware.
They were verified on nemo_toolkit 2.7.3 and megatron-core 0.15.3 (`compat.versions.VERIFIED`, checked when
`compat` is imported) with lightning 2.4.0 (the newest nemo_toolkit 2.7.3 accepts); the file:line references are to
those releases.

- Resume replays a batch: ``MegatronPretrainingBatchSampler.__len__``
  (nemo/collections/common/data/data_samplers.py:333-345) counts only the batches left after a resume, while
  Lightning adds the finished ones back (training_epoch_loop.py:182); the epoch ends early and the next one
  restarts at the resume point, so one global batch is trained twice. The length becomes the whole epoch.
- Checkpoint saves hang with several processes: NeMo's ``ProgressPrinter`` (a progress bar, so rank 0 only)
  logs megatron's timers every step (progress_printer.py:153-155), which all-gathers on the WORLD group
  (megatron/core/timers.py:297-304) from rank 0 alone. Rank 0 then runs one collective ahead of the others and
  the next WORLD collective (the checkpoint's broadcast in ModelCheckpoint.file_exists) never pairs up. With
  more than one process the timers are not logged from the progress bar.
- Validation runs at the wrong step after a resume: the step-interval checkpoint is written from
  ``on_train_batch_end`` (lightning/pytorch/loops/training_epoch_loop.py:269), before Lightning counts that batch
  as completed (:273), so the saved loop state has one batch processed but not completed. On restart
  ``reset_on_restart`` (loops/progress.py:69) rewinds ``ready`` to ``completed`` and every batch index of the
  resumed run is one behind: with ``trainer.val_check_interval=4``, a run stopped after step 4 validated after
  step 5 instead of step 8 and never ran its last validation (weights and training losses were right, the
  validation curve was not). The batch whose end wrote the checkpoint is counted as completed.
- A restore holds every expert's ``linear_fc1`` twice: megatron-core saves the gated fc1 as two halves and, after
  loading them in place into views of the parameter, merges them back with ``torch.cat``
  (megatron/core/transformer/mlp.py:381, applied by dist_checkpointing/serialization.py:165), a copy of the
  parameter that lives until NeMo has copied it back into that same parameter. fc1 is two thirds of the expert
  weights: the restore's peak grew by 2.1 GB per 20b layer in fp32 (measured, bench/bench_plan_memory.py), half
  that in bf16 on a GPU (25 GB for all 24 layers of gpt-oss-20b). When the halves loaded are exactly the
  parameter's two halves, in place, the parameter itself is the merge.
- LoRA on the experts trains wrongly with expert parallelism: NeMo's ``ParallelLinearAdapter`` on an expert
  (nemo/collections/llm/peft/utils.py:263, ``is_expert``) leaves its parameters without megatron-core's
  ``allreduce=False``, the mark of an expert parameter (transformer/moe/experts.py sets it on the experts'
  own weights), so DDP reduces the adapters' gradients over the data-parallel group
  (distributed/distributed_data_parallel.py:143) instead of the expert-data-parallel one. With EP 2 on two
  ranks the adapter of expert 0 (rank 0) was averaged with that of expert 2 (rank 1): the loss left the
  one-process curve at step 2 (0.033, 0.125 by step 6; tests/launch/test_data_expert_parallel.py). The adapters
  of an expert get the mark. And every rank drew its local experts' adapters from the same seeded sequence, so
  expert e and expert e + E/EP started identical, and the same run started from other adapters at another EP;
  an expert's adapter (a local expert of its own, SequentialMLP) is now drawn from a generator keyed by the
  seed and the expert's index in the whole model.

Examples:
    python -c "import compat.upstream as u; u.apply()"
"""

from __future__ import annotations

import contextlib
import re

_APPLIED = False


def apply() -> None:
    """Install the fixes (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _APPLIED = True
    _full_epoch_length()
    _timers_logged_only_alone()
    _saved_batch_counted_on_resume()
    _swiglu_merged_in_place()
    _expert_adapters_as_experts()


def _full_epoch_length() -> None:
    from nemo.collections.common.data.data_samplers import MegatronPretrainingBatchSampler

    def __len__(self) -> int:  # noqa: N807
        if self.drop_last:
            return self.total_samples // self.global_batch_size
        return (self.total_samples + self.global_batch_size - 1) // self.global_batch_size

    MegatronPretrainingBatchSampler.__len__ = __len__


def _timers_logged_only_alone() -> None:
    import torch.distributed as dist
    from nemo.lightning.pytorch.callbacks.progress_printer import ProgressPrinter

    log_timers = ProgressPrinter.log_megatron_timers

    def log_megatron_timers(self, timers):
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return None
        return log_timers(self, timers)

    ProgressPrinter.log_megatron_timers = log_megatron_timers


def _saved_batch_counted_on_resume() -> None:
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    reset = _TrainingEpochLoop.reset

    def reset_counting_the_saved_batch(self) -> None:
        if self.restarting:
            for tracker in (self.batch_progress.current, self.batch_progress.total):
                tracker.completed = tracker.processed
        reset(self)

    _TrainingEpochLoop.reset = reset_counting_the_saved_batch


def _swiglu_merged_in_place() -> None:
    import megatron.core.dist_checkpointing.mapping as mapping
    import megatron.core.dist_checkpointing.serialization as serialization
    import megatron.core.dist_checkpointing.tensor_aware_state_dict as tensor_aware

    merges = mapping.apply_factory_merges

    def apply_factory_merges(x1, x2, key=()):
        if isinstance(x2, mapping.ShardedTensorFactory) and _is_swiglu(x2):
            merged = halves_as_one(x1)
            if merged is not None:
                return merged
        return merges(x1, x2, key)

    # mapping recurses through its own global; the other two imported the function by name.
    for module in (mapping, serialization, tensor_aware):
        module.apply_factory_merges = apply_factory_merges


def _is_swiglu(factory) -> bool:
    return "apply_swiglu_sharded_factory" in getattr(factory.merge_fn, "__qualname__", "")


def halves_as_one(parts):
    """``torch.cat(parts)`` without a copy when ``parts`` lie one after the other in one storage (the halves
    loaded in place into the parameter): a view over both, value for value the concatenation along the first
    axis; None otherwise."""
    import torch

    if not isinstance(parts, list) or not parts:
        return None
    first = parts[0]
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in parts):
        return None
    end = first.data_ptr()
    for part in parts:
        if part.data_ptr() != end or not part.is_contiguous():
            return None
        if (part.dtype, part.device, part.shape[1:]) != (first.dtype, first.device, first.shape[1:]):
            return None
        if part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr():
            return None
        end += part.numel() * part.element_size()
    shape = (sum(t.shape[0] for t in parts), *first.shape[1:])
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), shape)


def _expert_adapters_as_experts() -> None:
    import functools
    import inspect

    from nemo.collections.llm.peft.utils import ParallelLinearAdapter

    init = ParallelLinearAdapter.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def adapter_init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if not bound.arguments["is_expert"]:
            init(self, *args, **kwargs)
            return
        # Upstream's draw of an expert's adapter must not move the random sequences the other adapters are
        # drawn from: a rank holds 1/EP of the experts, and the attention adapters after them would differ.
        with _random_state_kept():
            init(self, *args, **kwargs)
        for param in self.parameters():
            param.allreduce = False
        redraw_by_expert(self, bound.arguments["column_init_method"], bound.arguments["row_init_method"])

    ParallelLinearAdapter.__init__ = adapter_init


@contextlib.contextmanager
def _random_state_kept():
    """torch's generators (CPU, and this CUDA device) and megatron-core's CUDA RNG tracker as they were."""
    import torch
    from megatron.core.tensor_parallel import random as mrandom

    cuda = torch.cuda.is_available()
    tracker = mrandom.get_cuda_rng_tracker() if cuda else None
    states = tracker.get_states() if tracker is not None else None
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        yield
    if tracker is not None:
        tracker.set_states(states)


_LOCAL_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")


def redraw_by_expert(adapter, column_init_method: str, row_init_method: str) -> None:
    """Draw an expert's adapter again from a generator keyed by the current seed and the expert's index in the
    whole model, so that it does not depend on the expert-parallel layout. Only a local expert's own unsharded
    adapter (SequentialMLP, expert tensor parallel 1); any other keeps upstream's draw."""
    import zlib

    import torch
    from megatron.core import parallel_state as ps

    found = _LOCAL_EXPERT.search(adapter.base_linear_name)
    if found is None or ps.get_expert_tensor_parallel_world_size() > 1:
        return
    linears = (adapter.linear_in, adapter.linear_out)
    local = adapter.config.num_moe_experts // ps.get_expert_model_parallel_world_size()
    expert = ps.get_expert_model_parallel_rank() * local + int(found.group(1))
    name = _LOCAL_EXPERT.sub(f".experts.expert{expert}.", adapter.base_linear_name)
    seed = (torch.initial_seed() * 1_000_003 + zlib.crc32(name.encode())) % 2**63
    devices = [adapter.linear_in.weight.device] if adapter.linear_in.weight.is_cuda else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for linear, method in zip(linears, (column_init_method, row_init_method), strict=True):
            drawn = torch.empty(linear.weight.shape, dtype=torch.float32, device=linear.weight.device)
            adapter._get_init_fn(method)(drawn)
            linear.weight.copy_(drawn)
