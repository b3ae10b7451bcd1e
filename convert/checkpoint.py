"""NeMo gpt-oss checkpoints as the converters read and publish them.

- `GptOssHFExporter`: NeMo's ``hf`` exporter of ``GPTOSSModel`` with a faithful config, whole model in memory:
  loads a checkpoint on the host and gives its weights in Hugging Face names and layout, with the whole
  config mapped back (stock NeMo writes 20b defaults for every field but layers and experts). The registered
  ``hf`` exporter (``llm.export_ckpt``) is its streaming subclass in `convert.export_hf`; this one loads models
  for the checks and is the reference the streaming export is tested against.
- `restore_lora`: a LoRA checkpoint as trained (its base plus the adapters, unmerged), the way NeMo's own
  merge restores it.
- `is_complete` / `require_complete`: whether a folder is a finished NeMo checkpoint.
- `publishing`: every converter writes ``<out>.partial`` and renames it to ``out`` only when it succeeded.
- `CheckpointTensors`: the tensors of a ``torch_dist`` checkpoint read one region at a time (one layer's
  tensor, one expert's matrix), whatever tensor/expert/pipeline layout wrote it; `checkpoint_key` names a
  parameter's tensor there. `TrainedTensors` gives a checkpoint's parameters as trained: a full checkpoint's
  own, or a LoRA checkpoint's base plus each adapter's delta, one parameter at a time.

Examples:
    python -c "from convert.checkpoint import is_complete; print(is_complete('work/models/gpt-oss-tiny-nemo'))"
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import torch
from nemo.collections.llm.gpt.model.gpt_oss import HFGPTOSSExporter
from nemo.lightning import io, teardown

from compat import cpu, upstream
from convert.gpt_oss import (
    ConversionError,
    McoreNames,
    ModelShape,
    hf_config_from_nemo,
    load_hf_config,
    mcore_to_hf,
)


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished NeMo checkpoint (the last files NeMo writes are present)."""
    path = Path(path)
    return (path / "weights" / "metadata.json").exists() and (path / "context" / "io.json").exists()


def require_complete(path: Path, what: str, incomplete_fix: str) -> None:
    """Raise `FileNotFoundError` unless ``path`` is a finished NeMo checkpoint.

    Args:
        path: The folder.
        what: Where such a checkpoint comes from, said when ``path`` is not one at all.
        incomplete_fix: What to do when it was interrupted while being written.
    """
    if not (path / "context").is_dir() or not (path / "weights").is_dir():
        raise FileNotFoundError(
            f"{path} is not a NeMo checkpoint (expected context/ and weights/ inside); {what}"
        )
    if not is_complete(path):
        raise FileNotFoundError(
            f"{path} is an incomplete NeMo checkpoint (no weights/metadata.json or context/io.json); "
            f"it was interrupted while being written: {incomplete_fix}"
        )


# What an import records about its source, in the NeMo checkpoint's context/ (see `record_source`).
SOURCE_RECORD = "hf_source.json"


def record_source(nemo_dir: Path, hf_path: Path) -> None:
    """Record in an imported checkpoint which Hugging Face folder it came from and in which format."""
    hf = load_hf_config(hf_path)
    quant = (hf.get("quantization_config") or {}).get("quant_method")
    dtype = ModelShape.from_hf(hf).dtype
    record = {"path": str(hf_path.resolve()), "quantization": quant, "dtype": dtype}
    (nemo_dir / "context" / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def find_source(ckpt: Path) -> Path | None:
    """The Hugging Face folder the checkpoint's model was imported from, when its import recorded one."""
    candidates = [ckpt]
    adapters = ckpt / "weights" / "adapter_metadata.json"
    if adapters.exists():
        candidates.append(Path(json.loads(adapters.read_text())["model_ckpt_path"]))
    for folder in candidates:
        record = folder / "context" / SOURCE_RECORD
        if record.exists():
            path = Path(json.loads(record.read_text())["path"])
            return path if (path / "config.json").exists() else None
    return None


@contextmanager
def publishing(out: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield ``<out>.partial`` to write into; on success it replaces ``out``, on any failure it is removed.

    An interruption leaves at most ``<out>.partial``, which no reader takes for ``out`` and the next write
    replaces. Without ``overwrite`` an existing ``out`` is refused before anything is written.
    """
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


class GptOssHFExporter(HFGPTOSSExporter):
    """NeMo's ``hf`` exporter for gpt-oss with a faithful config and expert layout (whole model in memory)."""

    # Stock ``init`` reads this attribute, which its ``apply`` never sets (AttributeError).
    trust_remote_code = False
    dtype: torch.dtype | None = None

    @cached_property
    def nemo_config(self):
        return io.load_context(str(self), subpath="model.config")

    @cached_property
    def config(self):
        return hf_config_from_nemo(self.nemo_config, getattr(self.nemo_config, "generation_config", None))

    def load(self):
        """The NeMo model of this checkpoint, on the host, and its trainer (for teardown).

        NeMo's ``nemo_load`` for a checkpoint without adapters, except that a host without CUDA computes in fp32
        (`compat.cpu.compute_dtype`): a BF16 checkpoint is widened as it loads, the one on disk is unchanged.
        """
        from nemo.lightning import MegatronStrategy, Trainer, _strategy_lib

        cpu.enable()
        upstream.apply()  # the restore merges each expert's fc1 halves in place (no second copy of them)
        model = io.load_context(str(self), subpath="model")
        model.config.fp8, model.config.fp8_param = None, False  # as nemo_load: FP8 training, BF16 export
        model.config.perform_initialization = False  # every weight comes from the checkpoint
        cpu.compute_dtype(model.config)
        trainer = Trainer(
            devices=1, accelerator="cpu", strategy=MegatronStrategy(ddp="pytorch", setup_optimizers=False)
        )
        trainer.strategy.connect(model)
        trainer.strategy.setup_environment()
        with _strategy_lib.megatron_cpu_init_context(model.config):
            model.configure_model()
        trainer.strategy.setup(trainer)
        trainer.strategy.load_checkpoint(str(self))
        return model, trainer

    def hf_state_dict(self, model) -> dict[str, torch.Tensor]:
        sd = {k: v for k, v in model.module.state_dict().items() if not k.endswith("_extra_state")}
        return mcore_to_hf(sd, model.config, McoreNames(sd))

    def apply(self, output_path: Path) -> Path:
        from transformers import GptOssForCausalLM
        from transformers.modeling_utils import no_init_weights

        model, trainer = self.load()
        state = self.hf_state_dict(model)
        teardown(trainer, model)
        dtype = self.dtype or self.nemo_config.params_dtype
        config = self.config
        config.torch_dtype = dtype
        with no_init_weights():
            hf_model = GptOssForCausalLM(config).to(dtype)
        missing, unexpected = hf_model.load_state_dict(
            {k: v.to(dtype) for k, v in state.items()}, strict=False
        )
        if missing or unexpected:
            raise RuntimeError(
                f"export mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        gen = getattr(self.nemo_config, "generation_config", None)
        if gen is not None:
            hf_model.generation_config = gen
        hf_model.save_pretrained(output_path, safe_serialization=True)
        tokenizer = getattr(self.tokenizer, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_path)
        return output_path


def restore_lora(lora_ckpt: Path):
    """The model of a LoRA checkpoint as trained, on the host: ``(model, trainer, lora_transform)``.

    NeMo's own restore of base and adapters (``_setup_trainer_and_restore_model_and_adapter``), in the model's
    precision; the base checkpoint is the one named in ``weights/adapter_metadata.json``. Tear down with
    ``nemo.lightning.teardown(trainer, model)``.
    """
    import fiddle as fdl
    from nemo import lightning as nl
    from nemo.collections.llm.peft.api import _setup_trainer_and_restore_model_and_adapter
    from nemo.collections.llm.peft.lora import LoRA
    from nemo.collections.llm.recipes.precision.mixed_precision import bf16_mixed
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir

    cpu.enable()
    upstream.apply()  # as in `GptOssHFExporter.load`
    model = io.load_context(ckpt_to_context_subdir(lora_ckpt), "model")
    model.model_transform, model.__io__.model_transform = None, None
    model.config.perform_initialization = False
    cpu.compute_dtype(
        model.config
    )  # a LoRA run trained on a GPU (BF16) is merged in fp32 on a host without CUDA
    transform = io.load_context(ckpt_to_context_subdir(lora_ckpt), "model.model_transform")
    if not isinstance(transform, LoRA):
        raise ValueError(f"{lora_ckpt} records no LoRA transform; it is not a LoRA checkpoint")
    fp32 = model.config.params_dtype == torch.float32
    trainer = nl.Trainer(
        devices=1,
        accelerator="cpu",
        strategy=nl.MegatronStrategy(ddp="pytorch", setup_optimizers=False),
        plugins=nl.MegatronMixedPrecision(precision="32") if fp32 else fdl.build(bf16_mixed()),
    )
    _setup_trainer_and_restore_model_and_adapter(lora_ckpt, trainer, model, transform)
    return model, trainer, transform


# ------------------------------------------------------------------------------ reading torch_dist checkpoints

# How megatron-core names a parameter of the local (CPU) layer spec in a checkpoint: the layer index becomes the
# first axis of one tensor per kind (transformer_block.py, sharded_offsets), the norms take the names of
# Transformer Engine's fused ones (gpt_layer_specs.py:304 ``sharded_state_dict_keys_map``) and each local
# expert becomes an index along a second axis of ``mlp.experts.experts.*`` (moe/experts.py:1014, SequentialMLP;
# TEGroupedMLP writes the same keys). megatron-core 0.15.3, checked against every checkpoint's index.
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(.+)$")
_KEYS_MAP = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}


def checkpoint_key(name: str) -> tuple[str, tuple[int, ...]]:
    """``(key, index)`` of a megatron-core parameter (local spec name) in a ``torch_dist`` checkpoint: the
    parameter is ``checkpoint[key][index]``.

    Examples:
        python -c "from convert.checkpoint import checkpoint_key as k; print(k('decoder.layers.3.mlp.experts.local_experts.5.linear_fc1.weight'))"
    """
    layer = _LAYER.match(name)
    if layer is None:
        return f"module.{name}", ()
    i, rest = int(layer[1]), layer[2]
    expert = _EXPERT.match(rest)
    if expert is not None:
        return f"module.decoder.layers.mlp.experts.experts.{expert[2]}", (i, int(expert[1]))
    for local, saved in _KEYS_MAP.items():
        if rest.startswith(local):
            rest = saved + rest[len(local) :]
    return f"module.decoder.layers.{rest}", (i,)


class CheckpointTensors:
    """The tensors of a NeMo (``torch_dist``) checkpoint, read one region at a time.

    ``read(key, index)`` reads ``checkpoint[key][index]`` (say one layer's qkv weight, or one expert's fc1)
    through torch's distributed-checkpoint reader: only the stored items that overlap the region are read from
    disk, and the region is assembled from them whatever tensor-, expert- or pipeline-parallel layout wrote
    the checkpoint. Memory: the region plus the largest stored item it overlaps.

    Examples:
        python -c "from convert.checkpoint import CheckpointTensors as C; print(C('work/models/gpt-oss-tiny-nemo').read('module.decoder.final_layernorm.weight'))"
    """

    def __init__(self, path: str | Path):
        from torch.distributed.checkpoint import FileSystemReader

        self.path = Path(path)
        weights = self.path / "weights"
        backend = json.loads((weights / "metadata.json").read_text()).get("sharded_backend")
        if backend != "torch_dist":
            raise ConversionError(
                f"{self.path} was saved in the {backend!r} checkpoint format; only torch_dist (NeMo 2's "
                "default) is read here"
            )
        self.reader = FileSystemReader(str(weights))
        self.metadata = self.reader.read_metadata()
        self.reader.set_up_storage_reader(self.metadata, True)
        self.index = self.metadata.state_dict_metadata

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.index[key].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.index[key].properties.dtype

    def stored(self, key: str, index: tuple[int, ...] = ()) -> int:
        """How many elements of ``checkpoint[key][index]`` the stored items hold (0: none, e.g. an adapter
        trained on some layers only)."""
        covered = 0
        for chunk in self.index[key].chunks:
            overlap = 1
            for dim, i in enumerate(index):
                if not chunk.offsets[dim] <= i < chunk.offsets[dim] + chunk.sizes[dim]:
                    overlap = 0
            covered += overlap and math.prod(chunk.sizes[len(index) :])
        return covered

    def read(self, key: str, index: tuple[int, ...] = (), dtype: torch.dtype | None = None) -> torch.Tensor:
        """``checkpoint[key][index]`` as a new tensor (in ``dtype``, default the stored one).

        Raises:
            ConversionError: no such key, an index outside it, or a region the stored items do not cover.
        """
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        if key not in self.index:
            raise ConversionError(f"{self.path}: the checkpoint holds no tensor {key!r}")
        size = self.shape(key)
        if len(index) > len(size) or any(not 0 <= i < n for i, n in zip(index, size, strict=False)):
            raise ConversionError(f"{self.path}: index {index} is outside {key} of shape {size}")
        offsets = (*index, *[0] * (len(size) - len(index)))
        sizes = (*[1] * len(index), *size[len(index) :])
        region = torch.empty(sizes, dtype=dtype or self.dtype(key))
        items = create_read_items_for_chunk_list(key, self.index[key], [ChunkStorageMetadata(offsets, sizes)])
        if sum(math.prod(item.lengths) for item in items) != region.numel():
            raise ConversionError(
                f"{self.path}: the stored parts of {key} do not cover {index} (an incomplete checkpoint?)"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            self.reader.read_data(LoadPlan(items), _RegionPlanner(region)).wait()
        return region.reshape(size[len(index) :])


class _RegionPlanner:
    """The part of torch's ``LoadPlanner`` that ``FileSystemReader.read_data`` calls: where each read goes."""

    def __init__(self, region: torch.Tensor):
        self.region = region

    def resolve_tensor(self, read_item) -> torch.Tensor:
        view = self.region
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths, strict=True)):
            view = view.narrow(dim, start, length)
        return view

    def commit_tensor(self, read_item, tensor) -> None:
        pass

    def load_bytes(self, read_item, value) -> None:
        raise ConversionError(f"{read_item.dest_index.fqn}: a byte item where a tensor was expected")


class TrainedTensors:
    """The megatron-core parameters of a checkpoint as trained, one at a time, in the local spec's names.

    A full checkpoint (imported, or a full fine-tune) gives its own tensors. A LoRA checkpoint gives its base
    checkpoint's (``weights/adapter_metadata.json``) plus, for every parameter with an adapter, the delta
    ``alpha / dim * linear_out @ linear_in`` computed as NeMo's ``LoRAMerge`` does (same order, same dtype), so
    the result equals NeMo's merge bit for bit. Every adapter in the checkpoint must be used; an adapter of
    another kind (DoRA, canonical LoRA) is refused.

    Attributes:
        config: The NeMo ``GPTOSSConfig`` of the model.
        changed: Names of the parameters a LoRA delta was applied to (all of them for a full checkpoint: ``None``).

    Examples:
        python -c "from convert.checkpoint import TrainedTensors as T; t = T('work/models/gpt-oss-tiny-nemo'); print(t['decoder.final_layernorm.weight'].shape)"
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        require_complete(
            self.path,
            "expected an imported model (python -m convert.import_hf) or a fine-tuning checkpoint "
            "(<run_dir>/checkpoints/<name>-last)",
            "use an earlier checkpoint of the run, or import again",
        )
        self.config = _context(self.path, "model.config")
        adapters = self.path / "weights" / "adapter_metadata.json"
        self.lora = None
        if adapters.exists():
            self.lora = CheckpointTensors(self.path)
            transform = _context(self.path, "model.model_transform")
            if type(transform).__name__ != "LoRA":
                raise ConversionError(
                    f"{self.path} was trained with {type(transform).__name__}; only NeMo's LoRA adapters are "
                    "merged here"
                )
            self.scale = transform.alpha / transform.dim
            base = Path(json.loads(adapters.read_text())["model_ckpt_path"])
            if not (base / "weights").is_dir():
                raise FileNotFoundError(
                    f"the base NeMo checkpoint of {self.path} (model_ckpt_path in weights/adapter_metadata.json) "
                    f"is not at {base} (a relative path is relative to where training ran): run from there, "
                    "or import the base model there again (python -m convert.import_hf)"
                )
            require_complete(
                base, "import the base model again (python -m convert.import_hf)", "import it again"
            )
            self.base = CheckpointTensors(base)
            self._unused = {
                k
                for k in self.lora.index
                if ".adapter." in k and "_extra_state" not in k and not k.startswith("optimizer.")
            }
        else:
            self.base = CheckpointTensors(self.path)
            self._unused = set()
        self.changed: set[str] | None = set() if self.lora is not None else None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.read(name)

    def read(self, name: str) -> torch.Tensor:
        """Parameter ``name`` (local spec, e.g. ``decoder.layers.0.self_attention.linear_qkv.weight``)."""
        key, index = checkpoint_key(name)
        if key not in self.base:
            raise ConversionError(
                f"{self.base.path}: no tensor {key!r} for parameter {name} (a checkpoint of another model or "
                f"megatron-core version; it holds e.g. {sorted(self.base.index)[:4]})"
            )
        weight = self.base.read(key, index)
        if self.lora is None or not name.endswith(".weight"):
            return weight
        stem = key[: -len(".weight")]
        a_key, b_key = f"{stem}.adapter.linear_in.weight", f"{stem}.adapter.linear_out.weight"
        if a_key not in self.lora:
            return weight
        # With Transformer Engine's grouped experts NeMo trains one adapter shared by all experts of a layer
        # (no expert axis); the local spec gives every expert its own.
        a_index = index if len(self.lora.shape(a_key)) == len(index) + 2 else index[:1]
        if self.lora.stored(a_key, a_index) == 0 and self.lora.stored(b_key, a_index) == 0:
            return weight  # target patterns that leave this layer (or expert) without an adapter
        a = self.lora.read(a_key, a_index)
        b = self.lora.read(b_key, a_index)
        self._unused -= {a_key, b_key}
        self.changed.add(name)
        # nemo/collections/llm/peft/lora.py:799-802 (LoRAMerge.transform), NeMo 2.7.3.
        delta = self.scale * b @ a
        return weight + delta.to(weight.device)

    def unused_adapters(self) -> list[str]:
        """Adapter tensors of the checkpoint no parameter read so far has used."""
        return sorted(self._unused)


def _context(path: Path, subpath: str):
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir

    return io.load_context(ckpt_to_context_subdir(path), subpath)
