"""What gpt-oss is, in one place: the Hugging Face <-> NeMo config mapping and the weight layout.

Both directions are faithful to transformers' ``GptOssForCausalLM`` for any shape (tiny, 20b, 120b).
Stock NeMo 2.7.3 gets several of these wrong; each place we differ says why:

- config: stock copies only ``num_layers`` and ``num_experts`` and leaves everything else at 20b values.
- sliding window: HF ``sliding_window=W`` lets a query see W keys including itself; megatron-core
  ``window_size=(l, 0)`` shows l + 1 keys, so the faithful value is ``(W - 1, 0)`` (stock: ``(128, 0)``).
- YaRN: HF scales attention by ``0.1 * ln(factor) + 1`` when ``rope_scaling`` has no mscale keys;
  megatron-core reproduces that with ``yarn_mscale=1.0, yarn_mscale_all_dim=0.0`` (stock: both 1.0).
- expert layout: transformers stores ``gate_up_proj [E, hidden, 2*inter]`` and ``down_proj [E, inter, hidden]``
  (``[in, out]``), while MXFP4 blocks dequantise to ``[E, out, in]``. We bring both to the HF layout on
  load and transpose once; stock assumes ``[out, in]``, which is silently wrong for square matrices.
- ``bias_activation_fusion`` must be False: megatron-core 0.15 rejects NeMo's ``quick_gelu`` for the fused path;
  the unfused path still applies the clamp and the +1 offset of gpt-oss's gated activation.

Examples:
    python -c "from convert.gpt_oss import nemo_config_from_hf; print(nemo_config_from_hf('work/models/gpt-oss-tiny-hf'))"
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from convert import mxfp4


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted as it is."""


# ---------------------------------------------------------------------------------------------- config


def load_hf_config(path_or_config) -> dict:
    """The HF config as a plain dict, from a folder, a ``config.json`` or a ``GptOssConfig``."""
    if isinstance(path_or_config, Mapping):
        return dict(path_or_config)
    if hasattr(path_or_config, "to_dict"):
        return path_or_config.to_dict()
    path = Path(path_or_config)
    cfg_file = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not cfg_file.exists() and (path / "original_config.json").exists():
        return hf_config_from_original(json.loads((path / "original_config.json").read_text()))
    if cfg_file.name == "original_config.json" and cfg_file.exists():
        return hf_config_from_original(json.loads(cfg_file.read_text()))
    if not cfg_file.exists():
        raise ConversionError(f"no config.json at {path}: expected a Hugging Face gpt-oss checkpoint folder")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") != "gpt_oss":
        raise ConversionError(
            f"{cfg_file} has model_type={cfg.get('model_type')!r}; this converter handles 'gpt_oss' only"
        )
    return cfg


def hf_config_from_original(orig: Mapping) -> dict:
    """The transformers config (as a dict) of OpenAI's own ``original_config.json`` format.

    OpenAI publishes both formats for gpt-oss-20b (they agree, see tests/convert/test_param_counts.py) but
    only the original one for 120b in ``../shared/data``. Its YaRN fields are named after NTK-by-parts:
    ``rope_ntk_beta`` is ``beta_fast`` and ``rope_ntk_alpha`` is ``beta_slow``.

    Examples:
        python -c "from convert.gpt_oss import load_hf_config as c; print(c('../shared/data/gpt-oss/configs/gpt-oss-120b'))"
    """
    n, ctx, factor = orig["num_hidden_layers"], orig["initial_context_length"], orig["rope_scaling_factor"]
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt_oss",
        "num_hidden_layers": n,
        "num_local_experts": orig["num_experts"],
        "num_experts_per_tok": orig["experts_per_token"],
        "experts_per_token": orig["experts_per_token"],
        "vocab_size": orig["vocab_size"],
        "hidden_size": orig["hidden_size"],
        "intermediate_size": orig["intermediate_size"],
        "swiglu_limit": orig["swiglu_limit"],
        "head_dim": orig["head_dim"],
        "num_attention_heads": orig["num_attention_heads"],
        "num_key_value_heads": orig["num_key_value_heads"],
        "sliding_window": orig["sliding_window"],
        "layer_types": default_layer_types(n),
        "initial_context_length": ctx,
        "max_position_embeddings": int(ctx * factor),
        "rope_theta": orig["rope_theta"],
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": float(factor),
            "beta_fast": float(orig["rope_ntk_beta"]),
            "beta_slow": float(orig["rope_ntk_alpha"]),
            "original_max_position_embeddings": ctx,
            "truncate": False,
        },
        "attention_bias": True,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-05,
        "torch_dtype": "bfloat16",
    }


def default_layer_types(n: int) -> list[str]:
    """gpt-oss's attention pattern when a config does not list it: sliding-window layers first, alternating."""
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a gpt-oss, read from its Hugging Face config: the one reader of those fields.

    The converters, the parameter counts and the memory planner (`recipes.plan`) all take their sizes from here.

    Examples:
        python -c "from convert.gpt_oss import ModelShape as S; print(S.from_hf('../shared/data/gpt-oss/configs/gpt-oss-20b'))"
    """

    layers: int
    hidden: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    vocab: int
    tied: bool
    dtype: str  # of the checkpoint's weights: "bfloat16", "float32", ...

    @classmethod
    def from_hf(cls, path_or_config) -> ModelShape:
        """The shape of an HF gpt-oss folder, ``config.json``, dict or ``GptOssConfig`` (see `load_hf_config`)."""
        hf = load_hf_config(path_or_config)
        return cls(
            layers=hf["num_hidden_layers"],
            hidden=hf["hidden_size"],
            inter=hf["intermediate_size"],
            heads=hf["num_attention_heads"],
            kv_heads=hf["num_key_value_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            experts=hf["num_local_experts"],
            top_k=hf.get("num_experts_per_tok", hf.get("experts_per_token")),
            vocab=hf["vocab_size"],
            tied=bool(hf.get("tie_word_embeddings", False)),
            dtype=str(hf.get("torch_dtype") or hf.get("dtype") or "bfloat16").replace("torch.", ""),
        )

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def dtype_bytes(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2}.get(self.dtype, 2)

    def hf_shapes(self, quantized: bool = False) -> dict[str, tuple[int, ...]]:
        """Every tensor of an HF checkpoint of this shape (see `expected_hf_shapes`)."""
        return expected_hf_shapes(self, quantized)

    def layer_parameters(self) -> dict[str, int]:
        """Parameters of one transformer layer by part (`WeightRule.part`), from `WEIGHT_MAP`."""
        return _parameters_by_part(self, layer=True)

    def outer_parameters(self) -> dict[str, int]:
        """Parameters outside the layers by part: ``embedding``, ``output layer`` (untied only), ``final norm``."""
        return _parameters_by_part(self, layer=False)

    def total(self) -> int:
        """Total parameters: the one count that the importer, the exporters and the planner use."""
        return self.layers * sum(self.layer_parameters().values()) + sum(self.outer_parameters().values())


def nemo_config_kwargs(hf: dict) -> dict:
    """Keyword arguments of NeMo's ``GPTOSSConfig`` that reproduce an HF gpt-oss config exactly."""
    s = ModelShape.from_hf(hf)
    layer_types = hf.get("layer_types") or default_layer_types(s.layers)
    if len(layer_types) != s.layers:
        raise ConversionError(f"layer_types has {len(layer_types)} entries for {s.layers} layers")
    rope = dict(hf.get("rope_scaling") or {})
    if rope and rope.get("rope_type", rope.get("type")) != "yarn":
        raise ConversionError(f"rope_scaling type {rope.get('rope_type')!r} is not YaRN; gpt-oss uses YaRN")
    if not hf.get("attention_bias", True):
        raise ConversionError("attention_bias=False is not gpt-oss: its attention projections carry biases")
    dtype = getattr(torch, s.dtype)
    has_window = any(t == "sliding_attention" for t in layer_types)
    kwargs = dict(
        num_layers=s.layers,
        hidden_size=s.hidden,
        ffn_hidden_size=s.inter,
        moe_ffn_hidden_size=s.inter,
        num_attention_heads=s.heads,
        num_query_groups=s.kv_heads,
        kv_channels=s.head_dim,
        num_moe_experts=s.experts,
        moe_router_topk=s.top_k,
        vocab_size=s.vocab,
        layernorm_epsilon=hf.get("rms_norm_eps", 1e-5),
        share_embeddings_and_output_weights=s.tied,
        activation_func_clamp_value=hf.get("swiglu_limit", 7.0),
        seq_length=hf.get("max_position_embeddings", 131072),
        rotary_base=hf.get("rope_theta", 150000),
        # HF W keys (self included) == megatron-core (W - 1) keys before the query, plus itself.
        window_size=(hf["sliding_window"] - 1, 0) if has_window else None,
        # megatron-core: a truthy entry per layer (0-based here) means that layer uses the window.
        window_attn_skip_freq=[1 if t == "sliding_attention" else 0 for t in layer_types],
        bias_activation_fusion=False,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
    )
    if rope:
        kwargs.update(
            yarn_rotary_scaling_factor=float(rope["factor"]),
            yarn_original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", hf.get("initial_context_length", 4096))
            ),
            yarn_beta_fast=float(rope.get("beta_fast", 32.0)),
            yarn_beta_slow=float(rope.get("beta_slow", 1.0)),
            yarn_correction_range_round_to_int=bool(rope.get("truncate", True)),
            # HF: attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim), and
            # 0.1 * ln(factor) + 1 when neither key is given; megatron-core computes the same ratio.
            yarn_mscale=float(rope.get("mscale", 1.0)),
            yarn_mscale_all_dim=float(rope.get("mscale_all_dim", 0.0)),
        )
    return kwargs


def load_generation_config(path: str | Path):
    """The checkpoint's ``GenerationConfig`` (token ids of bos/eos/pad), or None when it has none.

    Pass it to the NeMo config's constructor: only constructor arguments reach a checkpoint's io context,
    and the exporter writes the token ids back from it.
    """
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except OSError:
        return None


def nemo_config_from_hf(path_or_config, **overrides):
    """NeMo ``GPTOSSConfig`` for an HF gpt-oss checkpoint or config; ``overrides`` win.

    Examples:
        python -c "from convert.gpt_oss import nemo_config_from_hf as f; print(f('work/models/gpt-oss-tiny-hf').hidden_size)"
    """
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSConfig

    hf = load_hf_config(path_or_config)
    kwargs = nemo_config_kwargs(hf)
    kwargs.update(overrides)
    return GPTOSSConfig(**kwargs)


def hf_config_from_nemo(cfg, generation_config=None):
    """The transformers ``GptOssConfig`` that a NeMo ``GPTOSSConfig`` describes (inverse of the above)."""
    from transformers import GptOssConfig

    skip = cfg.window_attn_skip_freq
    n = cfg.num_layers
    if isinstance(skip, int):
        windowed = [(i + 1) % skip != 0 for i in range(n)]
    elif skip is None:
        windowed = [True] * n
    else:
        windowed = [bool(s) for s in skip]
    if not cfg.window_size:
        windowed = [False] * n
    rope_scaling = {
        "rope_type": "yarn",
        "factor": cfg.yarn_rotary_scaling_factor,
        "beta_fast": cfg.yarn_beta_fast,
        "beta_slow": cfg.yarn_beta_slow,
        "original_max_position_embeddings": cfg.yarn_original_max_position_embeddings,
        "truncate": cfg.yarn_correction_range_round_to_int,
    }
    if (cfg.yarn_mscale, cfg.yarn_mscale_all_dim) != (1.0, 0.0):
        rope_scaling.update(mscale=cfg.yarn_mscale, mscale_all_dim=cfg.yarn_mscale_all_dim)
    extra = {}
    if generation_config is not None:
        eos = generation_config.eos_token_id
        extra = {
            "eos_token_id": eos[0] if isinstance(eos, list) else eos,
            "pad_token_id": generation_config.pad_token_id,
            "bos_token_id": generation_config.bos_token_id,
        }
    return GptOssConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.moe_ffn_hidden_size or cfg.ffn_hidden_size,
        num_hidden_layers=n,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.kv_channels,
        num_local_experts=cfg.num_moe_experts,
        num_experts_per_tok=cfg.moe_router_topk,
        experts_per_token=cfg.moe_router_topk,
        sliding_window=(cfg.window_size[0] + 1) if cfg.window_size else None,
        layer_types=["sliding_attention" if w else "full_attention" for w in windowed],
        # NeMo's seq_length is the training length a recipe sets; the model's context is what YaRN extends to.
        max_position_embeddings=int(
            cfg.yarn_original_max_position_embeddings * cfg.yarn_rotary_scaling_factor
        ),
        initial_context_length=cfg.yarn_original_max_position_embeddings,
        rope_theta=cfg.rotary_base,
        rope_scaling=rope_scaling,
        swiglu_limit=cfg.activation_func_clamp_value,
        rms_norm_eps=cfg.layernorm_epsilon,
        attention_bias=True,
        tie_word_embeddings=cfg.share_embeddings_and_output_weights,
        torch_dtype=cfg.params_dtype,
        **extra,
    )


# ------------------------------------------------------------------------------------- checkpoint files

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ARCHITECTURE = "GptOssForCausalLM"
_ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "U8": "uint8", "F64": "float64"}


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of an HF checkpoint (those its index names, else every ``*.safetensors``).

    Pickle checkpoints (``pytorch_model.bin`` and friends) are refused: loading one runs arbitrary code.
    """
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise ConversionError(
                f"{path}: {index.name} names {len(missing)} missing file(s) {missing[:4]}; "
                "the download is incomplete (re-run `huggingface-cli download` for this repository)"
            )
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = (
            sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
        )
        if pickles:
            raise ConversionError(
                f"{path} holds only pickle weights {pickles[:4]}, which are never loaded here (unpickling runs "
                "code); convert them to safetensors first, e.g. `GptOssForCausalLM.from_pretrained(path)"
                ".save_pretrained(out, safe_serialization=True)` on a machine you trust"
            )
        raise ConversionError(f"no *.safetensors in {path}; expected a Hugging Face checkpoint folder")
    return files


def read_header(file: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a safetensors file, from its JSON header alone (no tensor is read)."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {
        k: (_ST_DTYPES.get(v["dtype"], v["dtype"]), tuple(v["shape"]))
        for k, v in header.items()
        if k != "__metadata__"
    }


def expected_hf_shapes(hf, quantized: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor an HF gpt-oss checkpoint of config ``hf`` (or `ModelShape`) holds, with its shape.

    With ``quantized`` the expert matrices appear as MXFP4 pairs (``*_blocks [E, out, in/32, 16]`` and
    ``*_scales [E, out, in/32]``), as in ``openai/gpt-oss-*``; otherwise in transformers' ``[E, in, out]``.
    Names and shapes come from `WEIGHT_MAP`.

    Examples:
        python -c "from convert.gpt_oss import *; print(len(expected_hf_shapes(load_hf_config('work/models/gpt-oss-tiny-hf'))))"
    """
    s = hf if isinstance(hf, ModelShape) else ModelShape.from_hf(hf)
    shapes = {}
    for layer in (None, *range(s.layers)):
        for rule in _rules(WEIGHT_MAP, layer is not None, tied=s.tied):
            for name, shape in zip(rule.hf, rule.hf_shapes(s), strict=True):
                name = name.format(i=layer)
                if quantized and rule.mxfp4:
                    e, d_in, d_out = shape
                    shapes[f"{name}_blocks"] = (e, d_out, d_in // mxfp4.BLOCK, mxfp4.BLOCK // 2)
                    shapes[f"{name}_scales"] = (e, d_out, d_in // mxfp4.BLOCK)
                else:
                    shapes[name] = shape
    return shapes


def check_hf_checkpoint(path: str | Path) -> dict:
    """Check an HF gpt-oss folder before any weight is read; return its config as a dict.

    Checks: the folder and ``config.json`` exist; the model type and architecture are gpt-oss; the weights are
    safetensors (no pickle) and every file the index names is present; the quantisation is MXFP4 or none;
    and every tensor the config implies is present with the shape the config implies (read from the
    safetensors headers only). All problems are reported together.

    Examples:
        python -c "from convert.gpt_oss import check_hf_checkpoint as c; c('work/models/gpt-oss-tiny-hf')"
    """
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(
            f"{path} is not a folder: expected a Hugging Face gpt-oss checkpoint "
            "(download one with `huggingface-cli download openai/gpt-oss-20b --local-dir PATH`, "
            "or build the tiny one with `python -m convert.tiny`)"
        )
    hf = load_hf_config(path)
    problems = []
    archs = hf.get("architectures") or [ARCHITECTURE]
    if archs != [ARCHITECTURE]:
        problems.append(f"architectures={archs}; this converter handles [{ARCHITECTURE!r}] only")
    quant = hf.get("quantization_config") or {}
    method = quant.get("quant_method")
    if method not in (None, "mxfp4"):
        problems.append(
            f"quantization_config.quant_method={method!r} is not supported; use the original MXFP4 "
            "checkpoint or a BF16 copy"
        )
    headers = {}
    for file in checkpoint_files(path):
        headers.update(read_header(file))
    quantized = any(k.endswith("_blocks") for k in headers)
    if quantized and method != "mxfp4":
        problems.append(
            "tensors are MXFP4 (*_blocks/*_scales) but config.json has no mxfp4 quantization_config"
        )
    try:
        expected = expected_hf_shapes(hf, quantized)
    except KeyError as e:
        raise ConversionError(f"{path}/config.json lacks {e}; it is not a complete gpt-oss config") from e
    missing = sorted(set(expected) - set(headers))
    extra = sorted(set(headers) - set(expected))
    bad = [
        f"{k}: file {headers[k][1]} vs config {expected[k]}"
        for k in sorted(set(expected) & set(headers))
        if headers[k][1] != expected[k]
    ]
    bad += [
        f"{k}: dtype {headers[k][0]}, MXFP4 needs uint8"
        for k in expected
        if k.endswith(("_blocks", "_scales")) and k in headers and headers[k][0] != "uint8"
    ]
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config implies are missing: {missing[:6]}")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the config does not explain: {extra[:6]}")
    if bad:
        problems.append("shapes disagree with config.json:\n    " + "\n    ".join(bad[:8]))
    if problems:
        raise ConversionError(
            f"{path} is not a gpt-oss checkpoint this converter can read:\n  - "
            + "\n  - ".join(problems)
            + "\n(config.json and the weights must come from the same model)"
        )
    return hf


class HFTensors(Mapping):
    """The tensors of an HF gpt-oss checkpoint as a read-on-demand mapping, in transformers' BF16 layout.

    Nothing is read until a tensor is asked for; each access reads one tensor from its (memory-mapped)
    safetensors file, and `expert` reads a single expert of an expert tensor. MXFP4 ``*_blocks``/``*_scales``
    pairs appear under the dense name, dequantised and transposed to ``[E, in, out]``, so callers see one
    layout whatever the source. Only safetensors are ever opened (no pickle).

    Args:
        path: The checkpoint folder.
        dtype: Cast every tensor to this dtype (dequantised experts are produced in it directly).

    Examples:
        python -c "from convert.gpt_oss import HFTensors; print(HFTensors('work/models/gpt-oss-tiny-hf')['model.norm.weight'])"
    """

    def __init__(self, path: str | Path, dtype: torch.dtype | None = None):
        self.path, self.dtype = Path(path), dtype
        self._file: dict[str, Path] = {}
        for file in checkpoint_files(self.path):
            for key in read_header(file):
                self._file[key] = file
        self._names = [k for k in self._file if not k.endswith("_scales")]
        self._names = [k[: -len("_blocks")] if k.endswith("_blocks") else k for k in self._names]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._file or f"{name}_blocks" in self._file

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._get(name, None)

    def expert(self, name: str, e: int) -> torch.Tensor:
        """``self[name][e]``, reading (and dequantising) only expert ``e``: a 20b expert matrix is ~32 MiB in
        BF16 where the whole tensor is ~1 GiB."""
        return self._get(name, e)

    def _read(self, key: str, e: int | None) -> torch.Tensor:
        from safetensors import safe_open

        # Both reads map the file: only the pages of the requested tensor (or expert) are touched.
        with safe_open(str(self._file[key]), framework="pt", device="cpu") as f:
            return f.get_tensor(key) if e is None else f.get_slice(key)[e]

    def _get(self, name: str, e: int | None) -> torch.Tensor:
        if name in self._file:
            t = self._read(name, e)
            return t if self.dtype is None else t.to(self.dtype)
        blocks, scales = f"{name}_blocks", f"{name}_scales"
        if blocks not in self._file:
            raise KeyError(name)
        if scales not in self._file:
            raise ConversionError(f"{self.path}: {blocks} has no {scales} beside it")
        try:
            dense = mxfp4.dequantize(
                self._read(blocks, e), self._read(scales, e), self.dtype or torch.bfloat16, scales
            )
        except mxfp4.MXFP4Error as err:
            raise ConversionError(f"{self._file[blocks]}: {err}") from err
        # A view: dense[e] is then expert e's contiguous [out, in] matrix, which is what megatron-core wants,
        # and no second copy of the experts is made.
        return dense.transpose(-1, -2)


def _interleave_to_halves(w: torch.Tensor) -> torch.Tensor:
    """HF gate/up rows alternate (gate0, up0, gate1, ...); megatron wants [all gate; all up]."""
    return torch.cat((w[0::2], w[1::2]), dim=0)


def _halves_to_interleave(w: torch.Tensor) -> torch.Tensor:
    gate, up = torch.chunk(w, 2, dim=0)
    return torch.stack((gate, up), dim=1).flatten(0, 1)


def _qkv_dims(cfg) -> tuple[int, int, int]:
    return cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg) -> torch.Tensor:
    """Megatron's fused QKV: per query group, its q heads then its k head then its v head."""
    heads, groups, hd = _qkv_dims(cfg)
    rest = q.shape[1:]
    q = q.reshape(groups, heads // groups * hd, *rest)
    k = k.reshape(groups, hd, *rest)
    v = v.reshape(groups, hd, *rest)
    return torch.cat((q, k, v), dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `merge_qkv`: rows of megatron's fused QKV -> q, k, v rows (any trailing dims: a weight, a
    bias, or a LoRA B ``[rows, r]``)."""
    heads, groups, hd = _qkv_dims(cfg)
    rest = qkv.shape[1:]
    per = heads // groups * hd
    g = qkv.reshape(groups, per + 2 * hd, *rest)
    q, k, v = torch.split(g, [per, hd, hd], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _t(w: torch.Tensor) -> torch.Tensor:
    """An expert weight between HF ``[in, out]`` and megatron ``[out, in]``; a bias (1-D) as it is."""
    return w.t() if w.ndim == 2 else w


@dataclass(frozen=True)
class Transform:
    """How the HF tensor(s) of a `WeightRule` become its megatron-core tensor, and back (exact inverses)."""

    name: str
    to_mcore: Callable[..., torch.Tensor]  # (*hf tensors, cfg) -> megatron tensor
    to_hf: Callable[
        ..., tuple[torch.Tensor, ...]
    ]  # (megatron tensor, cfg) -> hf tensors, in `WeightRule.hf` order


COPY = Transform("copy", lambda t, cfg: t, lambda t, cfg: (t,))
# HF q, k, v projections <-> megatron's one fused linear_qkv, grouped per query group.
QKV = Transform("qkv", merge_qkv, split_qkv)
# One expert's fc1: HF [in, out] with gate/up columns interleaved <-> megatron [out, in] with [gate; up] halves.
FC1 = Transform(
    "fc1", lambda t, cfg: _interleave_to_halves(_t(t)), lambda t, cfg: (_t(_halves_to_interleave(t)),)
)
# One expert's fc2: HF [in, out] <-> megatron [out, in].
FC2 = Transform("fc2", lambda t, cfg: _t(t), lambda t, cfg: (_t(t),))


@dataclass(frozen=True)
class WeightRule:
    """One row of `WEIGHT_MAP`: a megatron-core tensor, the HF tensor(s) it is made of, and how.

    Patterns take ``{i}`` (layer) and ``{e}`` (expert). The megatron name is in the local (CPU) module layout;
    `McoreNames` rewrites it for Transformer Engine's. A row whose megatron name has ``{e}`` is per expert:
    its HF tensor stacks every expert (``[E, ...]``) and `transform` applies to one expert's slice.
    """

    mcore: str
    hf: tuple[str, ...]
    transform: Transform
    part: str  # what the parameter counts group it under (`ModelShape.layer_parameters`, the planner)
    hf_shapes: Callable[[ModelShape], tuple[tuple[int, ...], ...]]  # the shape of each HF tensor
    mxfp4: bool = False  # OpenAI's checkpoints store this HF tensor as MXFP4 *_blocks/*_scales
    tied: str | None = None  # the megatron tensor that stands in for this one when embeddings are tied

    @property
    def per_expert(self) -> bool:
        return "{e}" in self.mcore

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.mcore


def _row(mcore, hf, transform, part, hf_shapes, **kw) -> WeightRule:
    hf = (hf,) if isinstance(hf, str) else tuple(hf)
    return WeightRule(mcore, hf, transform, part, hf_shapes, **kw)


_L, _H, _E = "decoder.layers.{i}", "model.layers.{i}", "decoder.layers.{i}.mlp.experts.local_experts.{e}"
_QKV = ("q_proj", "k_proj", "v_proj")
# The HF <-> megatron-core weight map of gpt-oss, declared once: the importer (`mcore_sources`), the exporter
# (`mcore_to_hf`), the checkpoint check (`expected_hf_shapes`) and every parameter count derive from it.
# Order: tensors outside the layers, then a layer's tensors; per-expert rows come last and run expert-major.
WEIGHT_MAP: tuple[WeightRule, ...] = (
    _row("embedding.word_embeddings.weight", "model.embed_tokens.weight", COPY, "embedding",
         lambda s: ((s.vocab, s.hidden),)),
    _row("decoder.final_layernorm.weight", "model.norm.weight", COPY, "final norm", lambda s: ((s.hidden,),)),
    _row("output_layer.weight", "lm_head.weight", COPY, "output layer", lambda s: ((s.vocab, s.hidden),),
         tied="embedding.word_embeddings.weight"),
    _row(f"{_L}.input_layernorm.weight", f"{_H}.input_layernorm.weight", COPY, "router, norms",
         lambda s: ((s.hidden,),)),
    _row(f"{_L}.pre_mlp_layernorm.weight", f"{_H}.post_attention_layernorm.weight", COPY, "router, norms",
         lambda s: ((s.hidden,),)),
    _row(f"{_L}.self_attention.linear_qkv.weight", [f"{_H}.self_attn.{x}.weight" for x in _QKV], QKV,
         "attention matrices", lambda s: ((s.q, s.hidden), (s.kv, s.hidden), (s.kv, s.hidden))),
    _row(f"{_L}.self_attention.linear_proj.weight", f"{_H}.self_attn.o_proj.weight", COPY,
         "attention matrices", lambda s: ((s.hidden, s.q),)),
    _row(f"{_L}.mlp.router.weight", f"{_H}.mlp.router.weight", COPY, "router, norms",
         lambda s: ((s.experts, s.hidden),)),
    _row(f"{_L}.self_attention.linear_qkv.bias", [f"{_H}.self_attn.{x}.bias" for x in _QKV], QKV,
         "attention biases, sinks", lambda s: ((s.q,), (s.kv,), (s.kv,))),
    _row(f"{_L}.self_attention.linear_proj.bias", f"{_H}.self_attn.o_proj.bias", COPY,
         "attention biases, sinks", lambda s: ((s.hidden,),)),
    _row(f"{_L}.mlp.router.bias", f"{_H}.mlp.router.bias", COPY, "router, norms", lambda s: ((s.experts,),)),
    _row(f"{_L}.self_attention.core_attention.softmax_offset", f"{_H}.self_attn.sinks", COPY,
         "attention biases, sinks", lambda s: ((s.heads,),)),
    _row(f"{_E}.linear_fc1.weight", f"{_H}.mlp.experts.gate_up_proj", FC1, "expert matrices",
         lambda s: ((s.experts, s.hidden, 2 * s.inter),), mxfp4=True),
    _row(f"{_E}.linear_fc1.bias", f"{_H}.mlp.experts.gate_up_proj_bias", FC1, "expert biases",
         lambda s: ((s.experts, 2 * s.inter),)),
    _row(f"{_E}.linear_fc2.weight", f"{_H}.mlp.experts.down_proj", FC2, "expert matrices",
         lambda s: ((s.experts, s.inter, s.hidden),), mxfp4=True),
    _row(f"{_E}.linear_fc2.bias", f"{_H}.mlp.experts.down_proj_bias", FC2, "expert biases",
         lambda s: ((s.experts, s.hidden),)),
)  # fmt: skip


# NeMo's LoRA ``target_modules`` of gpt-oss -> the megatron-core module under ``decoder.layers.{i}`` each names
# (`WEIGHT_MAP`'s linear layers). The planner and the recipe check targets against it; `convert.export_peft`
# maps the attention ones to Hugging Face PEFT (the experts are no ``nn.Linear`` in transformers).
LORA_TARGETS = {
    "linear_qkv": "self_attention.linear_qkv",
    "linear_proj": "self_attention.linear_proj",
    "linear_fc1": "mlp.experts.linear_fc1",
    "linear_fc2": "mlp.experts.linear_fc2",
}
EXPERT_LORA_TARGETS = ("linear_fc1", "linear_fc2")
PEFT_MAPPED_TARGETS = {t: m for t, m in LORA_TARGETS.items() if t not in EXPERT_LORA_TARGETS}


def _rules(table, layer: bool, tied: bool) -> list[WeightRule]:
    """The rows of the layers (``layer``) or of the tensors outside them; tied embeddings drop the output row."""
    return [r for r in table if r.per_layer == layer and not (tied and r.tied)]


def _parameters_by_part(shape: ModelShape, layer: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule in _rules(WEIGHT_MAP, layer, tied=shape.tied):
        counts[rule.part] = counts.get(rule.part, 0) + sum(math.prod(s) for s in rule.hf_shapes(shape))
    return counts


def count_parameters(hf_config) -> int:
    """Total parameters of a gpt-oss from its config alone (nothing is allocated); see `ModelShape.total`.

    Examples:
        python -c "from convert.gpt_oss import count_parameters as c; print(c('../shared/data/gpt-oss/configs/gpt-oss-20b'))"
    """
    return ModelShape.from_hf(hf_config).total()


class McoreNames:
    """Parameter names of megatron-core's GPT model in either module layout: `WEIGHT_MAP` patterns -> names.

    With Transformer Engine the norms are fused into the next linear (``linear_qkv.layer_norm_weight``) and
    experts are grouped (``experts.linear_fc1.weight{e}``); the local (CPU) spec, in which `WEIGHT_MAP` is
    written, has separate norms and sequential experts (``experts.local_experts.{e}.linear_fc1.weight``).
    """

    def __init__(self, target_keys):
        keys = set(target_keys)
        self.fused_norm = any(k.endswith("self_attention.linear_qkv.layer_norm_weight") for k in keys)
        self.grouped = any(".mlp.experts.linear_fc1.weight" in k for k in keys)

    def __call__(self, pattern: str, **where) -> str:
        """The name of ``pattern`` in this layout, with ``where`` (``i``, ``e``) filled in."""
        if self.fused_norm:
            pattern = pattern.replace(
                ".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"
            )
        if self.grouped:
            pattern = re.sub(
                r"\.local_experts\.\{e\}\.(linear_fc[12])\.(weight|bias)$", r".\1.\2{e}", pattern
            )
        return pattern.format(**where)


def name_map(cfg, names: McoreNames) -> dict[str, tuple[str, ...]]:
    """Every megatron-core tensor name -> the HF tensor names it is made of, expanded from `WEIGHT_MAP`.

    An expert's tensor maps to its slice of the stacked HF tensor, so its HF name is shared by all experts.
    """
    out = {}
    for layer in (None, *range(cfg.num_layers)):
        for rule in _rules(WEIGHT_MAP, layer is not None, cfg.share_embeddings_and_output_weights):
            for e in range(cfg.num_moe_experts) if rule.per_expert else (None,):
                out[names(rule.mcore, i=layer, e=e)] = tuple(h.format(i=layer) for h in rule.hf)
    return out


def hf_to_mcore(hf: Mapping[str, torch.Tensor], cfg, names: McoreNames) -> dict[str, torch.Tensor]:
    """Convert an HF gpt-oss state dict (HF BF16 layout) to megatron-core names and layouts."""
    return {name: read() for name, read in mcore_sources(hf, cfg, names).items()}


def hf_to_mcore_outer(hf: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The tensors outside the layers: embeddings, final norm and (untied) output layer."""
    return {name: read() for name, read in _sources(hf, cfg, McoreNames([]), None).items()}


def iter_mcore_layer(
    hf: Mapping[str, torch.Tensor], i: int, cfg, names: McoreNames
) -> Iterator[tuple[str, torch.Tensor]]:
    """Layer ``i`` in megatron-core names and layouts, one tensor at a time (reads only that layer): a consumer
    that copies each away holds one expert's copy."""
    for name, read in _sources(hf, cfg, names, i).items():
        yield name, read()


def mcore_sources(
    hf: Mapping[str, torch.Tensor], cfg, names: McoreNames
) -> dict[str, Callable[[], torch.Tensor]]:
    """Every megatron-core tensor of the model, as a function that reads and converts just that tensor.

    Nothing is read until a function is called, and each call reads only what its tensor needs (from an
    `HFTensors`: one tensor, or one expert of an expert tensor, dequantised on the fly). So a consumer may
    ask for the tensors in any order (a checkpoint writer sorts them by size) and hold one at a time.

    Examples:
        python -c "from convert.gpt_oss import *; from convert.import_hf import GptOssHFImporter as I; p = 'work/models/gpt-oss-tiny-hf'; print(list(mcore_sources(HFTensors(p), I(p).config, McoreNames([]))))"
    """
    sources = _sources(hf, cfg, names, None)
    for i in range(cfg.num_layers):
        sources.update(_sources(hf, cfg, names, i))
    return sources


def _sources(hf, cfg, names: McoreNames, i: int | None) -> dict[str, Callable[[], torch.Tensor]]:
    """`mcore_sources` of layer ``i``, or of the tensors outside the layers when ``i`` is None."""
    rules = _rules(WEIGHT_MAP, i is not None, cfg.share_embeddings_and_output_weights)
    sources = {}
    for rule in (r for r in rules if not r.per_expert):
        sources[names(rule.mcore, i=i)] = partial(_read, hf, rule, i, None, cfg)
    for e in range(cfg.num_moe_experts):
        for rule in (r for r in rules if r.per_expert):
            sources[names(rule.mcore, i=i, e=e)] = partial(_read, hf, rule, i, e, cfg)
    return sources


def _read(
    hf: Mapping[str, torch.Tensor], rule: WeightRule, i: int | None, e: int | None, cfg
) -> torch.Tensor:
    keys = [h.format(i=i) for h in rule.hf]
    if e is None:
        return rule.transform.to_mcore(*(hf[k] for k in keys), cfg)
    # Expert e of the stacked HF tensor; an `HFTensors` reads (and dequantises) that expert alone.
    return rule.transform.to_mcore(
        *(hf.expert(k, e) if isinstance(hf, HFTensors) else hf[k][e] for k in keys), cfg
    )


def mcore_to_hf(mc: Mapping[str, torch.Tensor], cfg, names: McoreNames) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_mcore`: megatron-core state dict -> HF gpt-oss names and BF16 layout."""
    out = {}
    for layer in (None, *range(cfg.num_layers)):
        for rule in _rules(WEIGHT_MAP, layer is not None, tied=False):
            source = rule.tied if rule.tied and cfg.share_embeddings_and_output_weights else rule.mcore
            if rule.per_expert:
                experts = [
                    rule.transform.to_hf(mc[names(source, i=layer, e=e)], cfg)
                    for e in range(cfg.num_moe_experts)
                ]
                parts = [torch.stack(column) for column in zip(*experts, strict=True)]
            else:
                parts = rule.transform.to_hf(mc[names(source, i=layer)], cfg)
            out.update({h.format(i=layer): t for h, t in zip(rule.hf, parts, strict=True)})
    return {k: v.contiguous() for k, v in out.items()}


def count_nemo_parameters(hf_config) -> int:
    """Total parameters of the megatron-core model that NeMo builds for an HF gpt-oss config; nothing allocated.

    The config goes through `nemo_config_kwargs` (the mapping the importer uses) into NeMo's ``GPTOSSConfig``,
    and the model is built on torch's ``meta`` device in a one-process model-parallel group (created here and
    torn down again when none existed), so the count is what megatron-core really instantiates.

    Examples:
        python -c "from convert.gpt_oss import count_nemo_parameters as c; print(c('../shared/data/gpt-oss/configs/gpt-oss-20b'))"
    """
    import torch.distributed as dist
    from megatron.core import parallel_state
    from nemo.collections.llm.gpt.model.gpt_oss import GPTOSSConfig

    from compat import cpu

    kwargs = {**nemo_config_kwargs(load_hf_config(hf_config)), **cpu.CONFIG}
    if not cpu.cuda_available():
        kwargs.update(cpu.config_overrides())
    cfg = GPTOSSConfig(**{**kwargs, "params_dtype": torch.bfloat16})
    cpu.enable()
    created = not dist.is_initialized()
    if created:
        # An in-process store: no MASTER_ADDR/MASTER_PORT to set (and leave behind), no port to race for.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    made_groups = not parallel_state.model_parallel_is_initialized()
    if made_groups:
        parallel_state.initialize_model_parallel(1, 1)
    try:
        with torch.device("meta"):
            model = cfg.configure_model(None, vp_stage=None)
        return sum(p.numel() for p in model.parameters())
    finally:
        if made_groups:
            parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()
