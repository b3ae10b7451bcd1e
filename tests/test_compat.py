"""The compatibility layer: the version gate refuses an unverified stack, the override is recorded, and the
private upstream helpers of the streaming writer are present with the parameters they were verified with."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compat import private, versions

REPO = Path(__file__).resolve().parent.parent


def test_installed_stack_passes_the_gate():
    report = versions.check()
    assert report["mismatches"] == [] and report["override_used"] is False
    assert set(report["versions"]) >= {"nemo_toolkit", "megatron-core", "transformers"}


@pytest.mark.parametrize(
    ("package", "version"), [("nemo_toolkit", "2.8.0"), ("megatron-core", "0.16.0"), ("nemo_toolkit", None)]
)
def test_gate_refuses_another_version_with_the_fix(package, version, monkeypatch):
    monkeypatch.delenv(versions.OVERRIDE_ENV, raising=False)
    with pytest.raises(versions.VersionMismatch) as e:
        versions.check({package: version})
    message = str(e.value)
    assert f"{package} {version or 'not installed'} (verified: {versions.VERIFIED[package]})" in message
    assert "make setup" in message and "make image" in message and versions.OVERRIDE_ENV in message


def test_override_proceeds_and_is_recorded(monkeypatch, capsys):
    monkeypatch.setenv(versions.OVERRIDE_ENV, "1")
    report = versions.check({"megatron-core": "0.16.0"})
    assert report["override_used"] is True
    assert report["mismatches"] == ["megatron-core 0.16.0 (verified: ==0.15.3)"]
    assert report["versions"]["megatron-core"] == "0.16.0"
    assert versions.report() == report  # what the run summary records
    assert "proceeding with unverified versions" in capsys.readouterr().err
    versions.check()  # back to the real stack for the tests that follow
    assert versions.report()["override_used"] is False


def test_which_packages_are_checked():
    assert "torch" in versions.checked_packages(cuda=False, te_present=False)
    # With CUDA the CPU measures that patch torch are off; the container's torch build is the one used.
    assert "torch" not in versions.checked_packages(cuda=True, te_present=True)
    assert "transformer_engine" in versions.checked_packages(cuda=True, te_present=True)
    assert "transformer_engine" not in versions.checked_packages(cuda=False, te_present=False)


def _fake_dist(tmp_path: Path, name: str, version: str) -> Path:
    site = tmp_path / "site"
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return site


def _python(code: str, site: Path | None = None, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != versions.OVERRIDE_ENV}
    # A folder first on the path wins importlib.metadata's look-up: the installed stack appears as that version.
    environ["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, REPO) if p)
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, cwd=REPO)


def test_importing_compat_refuses_a_faked_nemo(tmp_path):
    site = _fake_dist(tmp_path, "nemo_toolkit", "2.8.0")
    run = _python("import compat", site)
    assert run.returncode != 0
    assert "VersionMismatch" in run.stderr
    assert "nemo_toolkit 2.8.0 (verified: ==2.7.3)" in run.stderr and "make setup" in run.stderr
    # The converters and recipes sit on compat: they refuse too, before any model code runs.
    assert "VersionMismatch" in _python("import convert.checkpoint", site).stderr


def test_override_lets_the_import_proceed(tmp_path):
    site = _fake_dist(tmp_path, "megatron-core", "0.16.0")
    run = _python(
        "import compat, json; print(json.dumps(compat.versions.report()))",
        site,
        **{versions.OVERRIDE_ENV: "1"},
    )
    assert run.returncode == 0, run.stderr
    assert '"override_used": true' in run.stdout and '"megatron-core": "0.16.0"' in run.stdout


def test_requirements_pin_the_verified_versions():
    """compat.versions.VERIFIED and requirements.txt state the same pins (one can't move without the other)."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*([=~<>!].*?)\s*(#.*)?$", line)
        if m:
            pins[m.group(1)] = m.group(2).replace(" ", "")
    for package in ("nemo_toolkit", "megatron-core", "transformers", "torch"):
        assert pins.get(package) == versions.VERIFIED[package], package


def test_one_place_names_the_images():
    """The Dockerfile's base and the container / Slurm profiles come from compat.versions, nowhere else."""
    assert re.search(r"^ARG BASE_IMAGE$", (REPO / "Dockerfile").read_text(), re.M)
    assert (
        versions.NGC_BASE_IMAGE in (REPO / "Makefile").read_text()
        or "NGC_BASE_IMAGE" in (REPO / "Makefile").read_text()
    )
    for profile in ("container", "slurm"):
        text = (REPO / "conf" / "cluster" / f"{profile}.yaml").read_text()
        assert "nvcr.io" not in text, profile
        assert "${project_image:}" in text, profile


def test_private_helpers_are_present_as_verified():
    """Fails naming the helper when a private upstream function the streaming writer uses changed."""
    assert private.problems() == []


def test_private_helper_check_names_a_changed_or_missing_helper(monkeypatch):
    import megatron.core.dist_checkpointing.strategies.filesystem_async as fs_async

    monkeypatch.setattr(fs_async, "_split_by_size_and_type", lambda bins, items, extra: None)
    monkeypatch.delattr(fs_async, "_item_size")
    found = private.problems()
    assert any(
        line.startswith(f"{fs_async.__name__}._split_by_size_and_type(bins, items, extra) changed")
        for line in found
    ), found
    assert any(f"{fs_async.__name__}._item_size is gone" in line for line in found), found
    with pytest.raises(private.PrivateHelperChanged, match="_item_size is gone"):
        private.check()


def _norm_config(**changes):
    from types import SimpleNamespace

    fields = dict(
        normalization="RMSNorm",
        sequence_parallel=True,
        layernorm_zero_centered_gamma=False,
        persist_layer_norm=False,
        memory_efficient_layer_norm=False,
    )
    return SimpleNamespace(**{**fields, **changes})


def test_sequence_parallel_norm_is_torch_rmsnorm_with_the_flag():
    import torch

    from compat.cpu import SequenceParallelRMSNorm

    norm = SequenceParallelRMSNorm(_norm_config(), hidden_size=8, eps=1e-5)
    assert isinstance(norm, torch.nn.RMSNorm) and norm.weight.sequence_parallel is True
    assert [name for name, _ in norm.named_parameters()] == [
        "weight"
    ]  # the checkpoint's names stay upstream's
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    # Anything else is upstream's WrappedTorchNorm, with its own refusals.
    with pytest.raises(AssertionError, match="zero_centered_gamma"):
        SequenceParallelRMSNorm(_norm_config(layernorm_zero_centered_gamma=True), hidden_size=8)


def test_cpu_measures_supply_the_norm_and_clear_the_expert_bias_flag():
    import compat.cpu as cpu

    cpu.enable()
    import megatron.core.transformer.transformer_block as block
    import nemo.collections.llm.gpt.model.base as nemo_gpt

    assert block.LayerNormImpl is cpu.SequenceParallelRMSNorm
    moe = _norm_config(num_moe_experts=4, moe_grouped_gemm=False, qk_layernorm=False)
    spec = nemo_gpt.default_layer_spec(moe)
    assert spec.submodules.input_layernorm is spec.submodules.pre_mlp_layernorm is cpu.SequenceParallelRMSNorm

    import torch

    expert = torch.nn.Module()
    expert.linear_fc2 = torch.nn.Linear(2, 2)
    expert.linear_fc2.bias.sequence_parallel = True  # as tensor_parallel/layers.py:1208 sets it
    cpu.clear_expert_bias_flag(expert)
    assert expert.linear_fc2.bias.sequence_parallel is False


# ------------------------------------------------------------------------------------------ the restore's memory


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if created:
        dist.destroy_process_group()


def _swiglu_state(weight):
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

    return {
        "fc1": apply_swiglu_sharded_factory(ShardedTensor.from_rank_offsets("fc1", weight, replica_id=0), ())
    }


def test_restore_merges_the_swiglu_halves_into_the_parameter_itself(tmp_path, one_process_group):
    import torch
    from megatron.core import dist_checkpointing

    from compat import cpu, upstream

    cpu.enable()  # megatron-core's writer synchronises CUDA
    upstream.apply()
    saved = torch.arange(24, dtype=torch.float32).reshape(6, 4)  # gate rows 0-2, up rows 3-5
    dist_checkpointing.save(_swiglu_state(saved), str(tmp_path))
    param = torch.full((6, 4), float("nan"))
    loaded = dist_checkpointing.load(_swiglu_state(param), str(tmp_path))["fc1"]
    assert torch.equal(loaded, saved) and torch.equal(param, saved)  # loaded in place, both halves in order
    assert loaded.data_ptr() == param.data_ptr()  # upstream's merge (torch.cat) would return a copy
    # Halves that do not lie one after the other in one storage are concatenated as upstream does.
    w, v = torch.ones(3, 4), torch.zeros(3, 4)
    assert upstream.halves_as_one([w, v]) is None
    assert upstream.halves_as_one(list(torch.chunk(saved, 2))[::-1]) is None


def test_weights_left_to_the_restore_are_nan_and_adapters_are_drawn_later():
    import torch

    from compat import cpu

    class Model:
        config = type("Config", (), {"perform_initialization": True})()
        drawn_at_build = None

        def configure_model(self):
            if not hasattr(self, "module"):
                self.drawn_at_build = self.config.perform_initialization
                self.module = torch.nn.Linear(3, 2)

        def parameters(self):
            return self.module.parameters()

    model = Model()
    cpu.weights_left_to_the_restore(model)
    model.configure_model()
    assert model.drawn_at_build is False  # built undrawn
    assert model.config.perform_initialization is True  # set back: adapters built later are drawn
    assert all(torch.isnan(p).all() for p in model.parameters())  # a weight the restore missed shows
    with torch.no_grad():
        model.module.weight.fill_(1.0)  # "restored"
    model.configure_model()  # NeMo calls it again: nothing is built or filled
    assert torch.equal(model.module.weight, torch.ones(2, 3))
