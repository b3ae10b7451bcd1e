"""The real gpt-oss configs map to NeMo models of the published sizes, counted without allocating weights."""

from __future__ import annotations

import json
import math

import pytest
from conftest import SHARED_DATA

from convert.gpt_oss import (
    count_nemo_parameters,
    count_parameters,
    expected_hf_shapes,
    hf_config_from_original,
    load_hf_config,
)

CONFIGS = SHARED_DATA / "gpt-oss" / "configs"
PUBLISHED = {"gpt-oss-20b": 20_914_757_184, "gpt-oss-120b": 116_829_156_672}


def _config(name):
    folder = CONFIGS / name
    if not folder.is_dir():
        pytest.skip(f"real gpt-oss configs not present at {CONFIGS}")
    return folder


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hf_side_count(name):
    assert count_parameters(_config(name)) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_nemo_model_count_on_meta_device(name):
    """Built by megatron-core from the config `nemo_config_kwargs` maps to, on the meta device."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    assert count_nemo_parameters(_config(name)) == PUBLISHED[name]
    # 120b in bf16 would be 234 GB: the count raised this process's peak by less than 2 GiB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 * 2**20


def test_original_config_maps_like_the_published_hf_config():
    """120b ships only OpenAI's original_config.json here; for 20b both formats exist and must agree."""
    folder = _config("gpt-oss-20b")
    hf = json.loads((folder / "config.json").read_text())
    mapped = hf_config_from_original(json.loads((folder / "original_config.json").read_text()))
    for key, value in mapped.items():
        if key in hf:
            assert hf[key] == value, key
    assert load_hf_config(_config("gpt-oss-120b"))["num_local_experts"] == 128


def test_shapes_implied_by_the_config_are_the_real_index():
    """Names, shapes and byte total of the real MXFP4 checkpoint follow from its config.json alone."""
    folder = _config("gpt-oss-20b")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shapes = expected_hf_shapes(load_hf_config(folder), quantized=True)
    assert sorted(shapes) == sorted(index["weight_map"])
    nbytes = sum(math.prod(s) * (1 if k.endswith(("_blocks", "_scales")) else 2) for k, s in shapes.items())
    assert nbytes == index["metadata"]["total_size"] == 13_761_264_768
