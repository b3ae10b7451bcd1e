"""Import a Hugging Face gpt-oss checkpoint (MXFP4 or BF16) into a NeMo 2 checkpoint.

Registers `GptOssHFImporter` as NeMo's ``hf`` importer of ``GPTOSSModel``, so ``llm.import_ckpt`` and
``nemo://``/``hf://`` resumes in the recipes use it. It maps the whole HF config (see `convert.gpt_oss`),
normalises the expert layout of both checkpoint kinds, keeps the source dtype unless told otherwise, and
never loads pickles or remote code. The checkpoint is checked before anything heavy (`check_hf_checkpoint`),
streamed into the NeMo checkpoint a tensor at a time without building the model (`stream_hf_weights`; memory
does not grow with the number of layers), verified against the source when that is cheap, and published
atomically (``<out>.partial``, then a rename).

Examples:
    python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out work/models/gpt-oss-tiny-nemo
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager, nullcontext
from functools import cached_property
from pathlib import Path

import torch
from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSModel, HFGPTOSSImporter
from nemo.lightning import io, teardown

from compat import cpu
from convert import verify as verification
from convert.checkpoint import is_complete, publishing, record_source
from convert.gpt_oss import (
    ConversionError,
    HFTensors,
    McoreNames,
    check_hf_checkpoint,
    count_parameters,
    hf_to_mcore_outer,
    iter_mcore_layer,
    load_generation_config,
    mcore_sources,
    nemo_config_from_hf,
)


@io.model_importer(GPTOSSModel, "hf")
class GptOssHFImporter(HFGPTOSSImporter):
    """NeMo's ``hf`` importer for gpt-oss with a faithful config and expert layout.

    ``config_overrides`` (a dict) is applied to the mapped config as constructor arguments, so it is recorded
    in the checkpoint's io context (values set after construction would not be). ``streaming`` chooses how the
    weights reach the checkpoint (see `apply`).
    """

    config_overrides: dict = {}
    # Stream the weights into the checkpoint (nothing of the model is materialised); False: build the model in
    # memory, fill it and save it (any checkpoint format NeMo is set to write).
    streaming: bool = True

    @cached_property
    def config(self):
        # The device measures only: the checkpoint keeps the source's dtype on every host (a CPU run widens it to
        # fp32 when it loads it, `compat.cpu.compute_dtype`).
        return nemo_config_from_hf(
            str(self),
            generation_config=load_generation_config(str(self)),
            **{**cpu.device_overrides(), **self.config_overrides},
        )

    @cached_property
    def tokenizer(self):
        from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer

        # The tokenizer files are read from the checkpoint folder itself (stock NeMo copies them through a
        # fixed /tmp folder shared by every concurrent import). Remote code is never trusted here.
        return AutoTokenizer(str(self), trust_remote_code=False)

    def apply(self, output_path: Path, trust_remote_code: bool | None = None) -> Path:
        """Convert into ``output_path``: streamed (`stream_hf_weights`) or through a model built in memory.

        Both run NeMo's own ``nemo_setup`` and ``nemo_save`` and write the same files byte for byte (weights,
        ``common.pt``, ``metadata.json``, ``context/``; the ``.metadata`` index differs only in where it was
        written). Streaming builds the model on the meta device and reads each tensor from the source when the
        checkpoint writer writes it; in memory, the model is built and filled one tensor at a time
        (`load_hf_weights`), then saved.
        """
        check_hf_checkpoint(str(self))
        self.trust_remote_code = False
        cpu.enable()
        target = self.init()
        with _configured_on_meta(target) if self.streaming else nullcontext():
            trainer = self.nemo_setup(target)
        try:
            if self.streaming:
                stream_hf_weights(trainer, target.module, str(self), self.config)
            else:
                load_hf_weights(target.module, str(self), self.config)
            self.nemo_save(output_path, trainer)
        finally:
            if self.streaming and hasattr(target, "module"):
                # Lightning's teardown moves the model to the host, which a meta module cannot do (it holds
                # nothing to move).
                del target.module
            teardown(trainer, target)
        return output_path


@contextmanager
def _configured_on_meta(model: GPTOSSModel):
    """Make NeMo's ``nemo_setup`` build the megatron-core module on torch's meta device: shapes, no storage.

    ``nemo_setup`` calls ``model.configure_model()`` once the parallel state exists; only that call runs under
    the meta device, so process groups and their tensors are made as usual.
    """
    configure = model.configure_model

    def on_meta(*args, **kwargs):
        with torch.device("meta"):
            return configure(*args, **kwargs)

    model.configure_model = on_meta
    try:
        yield
    finally:
        del model.configure_model


def stream_hf_weights(trainer, module: torch.nn.Module, hf_path: str | Path, cfg) -> None:
    """Make ``trainer``'s next save write ``module`` (on the meta device) with the weights of an HF checkpoint.

    Each parameter is read from the source (`mcore_sources`: one tensor, or one expert dequantised on the
    fly) when the checkpoint writer reaches it, written and freed (`convert.streaming_save`), so the process
    holds about one tensor at a time whatever the model size (the largest: 20b's embeddings, 1.1 GiB in BF16).
    Sources and model are checked against each other before anything is written.

    Args:
        trainer: The trainer of ``nemo_setup``; ``nemo_save`` then writes the checkpoint.
        module: The megatron-core ``GPTModel`` (``GPTOSSModel.module``), built on the meta device.
        hf_path: Hugging Face gpt-oss folder, MXFP4 or BF16.
        cfg: The NeMo ``GPTOSSConfig`` the module was built from.

    Examples:
        python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out work/models/gpt-oss-tiny-nemo
    """
    # Imported here: the private upstream helpers it builds on are checked (compat.private) only when used.
    from convert.streaming_save import use_streaming_save

    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("_extra_state")}
    sources = mcore_sources(HFTensors(hf_path, dtype=cfg.params_dtype), cfg, McoreNames(expected))
    _check_names(hf_path, set(sources), set(expected))
    # NeMo's MegatronParallel saves the module's sharded state dict under this prefix (megatron_parallel.py:784).
    use_streaming_save(
        trainer.strategy,
        {f"module.{k}": v for k, v in sources.items()},
        {f"module.{k}": v for k, v in expected.items()},
    )


def load_hf_weights(module: torch.nn.Module, hf_path: str | Path, cfg) -> None:
    """Fill a built megatron-core gpt-oss ``module`` with the weights of an HF checkpoint, a tensor at a time.

    Source tensors are read on demand (`HFTensors`: one tensor, or one expert of an expert tensor, MXFP4
    dequantised straight into the model's dtype) and copied into the module's parameters one at a time, so
    beside the module the process holds one source tensor. Every parameter must be filled exactly once, with
    its exact shape.
    This is also the way to make a trainable model without an intermediate NeMo checkpoint: build the model
    as training does, then call this. Tensor, pipeline and expert parallel shards are not handled yet
    (each rank would take its slice of a layer); those runs import to a checkpoint first.

    Args:
        module: The megatron-core ``GPTModel`` (``GPTOSSModel.module``).
        hf_path: Hugging Face gpt-oss folder, MXFP4 or BF16.
        cfg: The NeMo ``GPTOSSConfig`` the module was built from.

    Examples:
        python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out work/models/gpt-oss-tiny-nemo
    """
    sizes = {
        "tensor": cfg.tensor_model_parallel_size,
        "pipeline": cfg.pipeline_model_parallel_size,
        "expert": cfg.expert_model_parallel_size,
    }
    if any(v > 1 for v in sizes.values()):
        raise ConversionError(
            f"loading HF weights into a sharded model ({sizes}) is not supported; import to a NeMo "
            "checkpoint with one process (python -m convert.import_hf) and let training reshard it"
        )
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("_extra_state")}
    names = McoreNames(expected)
    source = HFTensors(hf_path, dtype=cfg.params_dtype)
    targets = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    parts = [lambda: hf_to_mcore_outer(source, cfg).items()]
    parts += [lambda i=i: iter_mcore_layer(source, i, cfg, names) for i in range(cfg.num_layers)]
    done: set[str] = set()
    for part in parts:
        try:
            for name, tensor in part():
                _copy_checked(targets, {name: tensor}, expected)
                done.add(name)
                del tensor
        except KeyError as e:
            raise ConversionError(
                f"{hf_path}: tensor {e} is missing; is this a complete gpt-oss checkpoint?"
            ) from e
    missing = sorted(set(expected) - done)
    if missing:
        raise ConversionError(
            f"the model built from {hf_path}/config.json has tensors no mapping fills: {missing[:8]}"
        )


def _check_names(hf_path: str | Path, filled: set[str], expected: set[str]) -> None:
    """Refuse a mapping that fills tensors the model lacks, or leaves some of the model's tensors unfilled."""
    extra, missing = sorted(filled - expected), sorted(expected - filled)
    if extra:
        raise ConversionError(
            f"the checkpoint does not match the model built from its config:\n  unexpected: {extra[:8]}"
        )
    if missing:
        raise ConversionError(
            f"the model built from {hf_path}/config.json has tensors no mapping fills: {missing[:8]}"
        )


def _copy_checked(targets: dict, converted: dict, expected: dict) -> None:
    """Copy converted tensors into the module's tensors ``targets``, refusing unexpected or misshapen ones."""
    extra = sorted(set(converted) - set(expected))
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if extra or bad:
        raise ConversionError(
            "the checkpoint does not match the model built from its config:"
            + (f"\n  unexpected: {extra[:8]}" if extra else "")
            + ("\n  shape: " + "\n  shape: ".join(bad[:8]) if bad else "")
        )
    with torch.no_grad():
        for k, v in converted.items():
            targets[k].copy_(v)


DTYPES = ("source", "bfloat16", "float32")


def dtype_overrides(dtype: str) -> dict:
    """NeMo config arguments that store the checkpoint in ``dtype`` (``source``: the source's, nothing to set)."""
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "source":
        return {}
    t = getattr(torch, dtype)
    return {
        "params_dtype": t,
        "bf16": t == torch.bfloat16,
        "fp16": False,
        "pipeline_dtype": t,
        "autocast_dtype": t,
    }


def import_hf(
    hf_path: str | Path,
    out: str | Path,
    overwrite: bool = False,
    verify: bool | None = None,
    streaming: bool = True,
    dtype: str = "source",
    **config_overrides,
) -> Path:
    """Import ``hf_path`` into a NeMo checkpoint at ``out``; nothing appears at ``out`` unless it succeeds.

    The checkpoint is checked first (files, architecture, tensor names and shapes against the config:
    `check_hf_checkpoint`), then written to ``<out>.partial``, verified, and renamed to ``out``. An
    interruption leaves at most ``<out>.partial``, which is never taken for a checkpoint and is replaced by the
    next import.

    Args:
        hf_path: Hugging Face gpt-oss folder (MXFP4 or BF16 safetensors).
        out: NeMo checkpoint folder to write.
        overwrite: Replace an existing ``out``; without it a complete ``out`` is returned as it is.
        verify: Compare the import with the source (`convert.verify`) before publishing it; ``None``: only when
            cheap (models up to ``convert.verify.MAX_PARAMS`` parameters).
        streaming: Write the weights straight from the source into the checkpoint, a tensor at a time, without
            building the model (`stream_hf_weights`); False: build the model in memory, fill it and save it.
            Both give the same checkpoint, bit for bit.
        dtype: The stored weights' dtype: ``source`` (the source's ``torch_dtype``: BF16 for the published gpt-oss,
            whose MXFP4 experts are dequantised to it exactly) on every host, or ``bfloat16`` / ``float32``.
        **config_overrides: NeMo config constructor arguments to apply.

    Examples:
        python -m convert.import_hf --hf work/models/gpt-oss-tiny-hf --out work/models/gpt-oss-tiny-nemo
    """
    hf_path, out = Path(hf_path), Path(out)
    if not (hf_path / "config.json").exists():
        raise ConversionError(
            f"{hf_path} has no config.json: expected a Hugging Face gpt-oss folder "
            "(build the tiny one with `python -m convert.tiny`)"
        )
    hf = check_hf_checkpoint(hf_path)
    if out.exists() and not overwrite:
        if is_complete(out):
            return out
        raise ConversionError(f"{out} exists but is not a complete NeMo checkpoint; re-run with --overwrite")
    if verify is None:
        verify = count_parameters(hf) <= verification.MAX_PARAMS
    with publishing(out) as tmp:
        connector = GptOssHFImporter(str(hf_path))
        connector.config_overrides = {**dtype_overrides(dtype), **config_overrides}
        connector.streaming = streaming
        connector.apply(tmp)
        connector.on_import_ckpt(GPTOSSModel(connector.config, tokenizer=connector.tokenizer))
        record_source(tmp, hf_path)
        if verify:
            verification.enforce(
                verification.verify(hf_path, tmp),
                f"{tmp.name} against {hf_path}",
                "the import does not reproduce its source",
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Import a Hugging Face gpt-oss checkpoint into NeMo.")
    parser.add_argument("--hf", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--out", required=True, help="NeMo checkpoint folder to write")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=None, help="default: only for small models"
    )
    parser.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the weights a tensor at a time without building the model (default); "
        "--no-streaming builds the model in memory first",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="source",
        help="dtype of the stored weights (default: the source's, on every host; a CPU run computes in fp32 "
        "and widens them when it loads them)",
    )
    args = parser.parse_args()
    out = import_hf(
        args.hf,
        args.out,
        overwrite=args.overwrite,
        verify=args.verify,
        streaming=args.streaming,
        dtype=args.dtype,
    )
    print(f"NeMo checkpoint: {out}")


if __name__ == "__main__":
    main()
