"""Checkpoints resume with another layout: a run stopped after step 4 under tensor parallel 2 x expert parallel 2
(two processes through the launcher, sequence parallel on) continues in one process, and a run stopped in one
process continues under TP 2 x EP 2; both on the loss curve of one uninterrupted process (LoRA, 8 steps), and
validating at the same steps with the same validation losses.

The optimizer state travels too: without the distributed optimizer (the CPU path) each Adam moment is saved as
one global tensor per parameter, cut into the saving layout's shards, and read back in any other cut.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import read_summary, run_module

STEPS, STOP = 8, 4
COMMON = [
    "peft=lora",
    f"trainer.max_steps={STEPS}",
    f"trainer.checkpoint_every_n_steps={STOP}",
    f"trainer.val_check_interval={STOP}",
    "export.enabled=false",
]
ONE = ["recipes.finetune"]
TP2_EP2 = ["launch", "cluster.devices_per_node=2", "parallel=tp2_ep2"]
RUN_NAME = "gpt_oss_tiny-lora"


def _summary(work: Path, run_id: str) -> dict:
    return read_summary(work, RUN_NAME, run_id)


def _optimizer_shards(ckpt: Path) -> dict[str, tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """Each optimizer tensor of a checkpoint: its global shape and the offsets of the shards it was saved in."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt / "weights")).read_metadata().state_dict_metadata
    return {
        key: (tuple(m.size), sorted(tuple(c.offsets) for c in m.chunks))
        for key, m in meta.items()
        if key.startswith("optimizer.")
    }


def _stop_then_resume(first: list[str], second: list[str], run_id: str, work: Path, home: Path) -> dict:
    """Train until STOP with ``first``, then continue to STEPS with ``second`` in the same run folder."""
    run_module([*first, *COMMON, f"run_id={run_id}", f"trainer.stop_at_step={STOP}"], work, home)
    stopped = _summary(work, run_id)
    # Read now: the resumed run replaces this checkpoint by its own.
    shards = _optimizer_shards(Path(stopped["checkpoint"]))
    run_module([*second, *COMMON, f"run_id={run_id}"], work, home)
    return {"stopped": stopped, "shards": shards, "resumed": _summary(work, run_id)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted process (prepares the tiny model and data), then both stop-and-resume pairs."""
    work = tmp_path_factory.mktemp("work")
    home = tmp_path_factory.mktemp("nemo_run")
    run_module([*ONE, *COMMON, "run_id=reference"], work, home)
    return {
        "reference": _summary(work, "reference"),
        "tp_to_one": _stop_then_resume(TP2_EP2, ONE, "tp_to_one", work, home),
        "one_to_tp": _stop_then_resume(ONE, TP2_EP2, "one_to_tp", work, home),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pair", "saved_by", "resumed_by"),
    [("tp_to_one", 2, 1), ("one_to_tp", 1, 2)],
    ids=["tp2ep2-to-1", "1-to-tp2ep2"],
)
def test_resume_with_another_layout_continues_the_uninterrupted_curve(runs, pair, saved_by, resumed_by):
    reference, stopped, resumed = runs["reference"]["losses"], runs[pair]["stopped"], runs[pair]["resumed"]
    assert len(reference) == STEPS and reference[-1] < reference[0]  # it trains at all
    assert stopped["processes"] == saved_by and stopped["first_step"] == 0
    assert f"step={STOP - 1}" in Path(stopped["checkpoint"]).name
    assert stopped["losses"] == pytest.approx(reference[:STOP], abs=1e-4)
    assert resumed["processes"] == resumed_by and resumed["first_step"] == STOP
    # Four more optimizer steps: Adam's moments and the data position must both have come across.
    assert resumed["losses"] == pytest.approx(reference[STOP:], abs=1e-4)
    assert f"step={STEPS - 1}" in Path(resumed["checkpoint"]).name
    assert resumed["trainable_names"] == runs["reference"]["trainable_names"]


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["tp_to_one", "one_to_tp"])
def test_resume_validates_at_the_steps_of_the_uninterrupted_run(runs, pair):
    reference = runs["reference"]["val_losses"]
    assert [step for step, _ in reference] == [STOP, STEPS]  # trainer.val_check_interval=STOP
    # The stopped run validates at STOP, the resumed one at STEPS only (compat.upstream: not one step late).
    joined = runs[pair]["stopped"]["val_losses"] + runs[pair]["resumed"]["val_losses"]
    assert [step for step, _ in joined] == [STOP, STEPS]
    assert [loss for _, loss in joined] == pytest.approx([loss for _, loss in reference], abs=1e-4)


@pytest.mark.slow
def test_optimizer_state_is_saved_per_parameter_whatever_the_layout(runs):
    tp, one = runs["tp_to_one"]["shards"], runs["one_to_tp"]["shards"]
    moments = {k for k in one if k.startswith(("optimizer.state.exp_avg.", "optimizer.state.exp_avg_sq."))}
    assert (
        len(moments) == 8
    )  # 2 moments x 4 adapter matrices (linear_qkv, linear_proj x in, out), layers stacked
    # The same tensors with the same global shapes: nothing in the format depends on the saving layout.
    assert {k: size for k, (size, _) in tp.items()} == {k: size for k, (size, _) in one.items()}
    for key in moments:
        (size, one_cut), (_, tp_cut) = one[key], tp[key]
        assert one_cut == [(layer, 0, 0) for layer in range(size[0])]  # one process: a shard per layer
        assert len(tp_cut) == 2 * size[0]  # TP 2: each layer's matrix in two halves, one per rank
