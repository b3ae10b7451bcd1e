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

Examples:
    python -c "import compat.upstream as u; u.apply()"
"""

from __future__ import annotations

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
