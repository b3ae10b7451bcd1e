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
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


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
    if not cfg_file.exists():
        raise ConversionError(f"no config.json at {path}: expected a Hugging Face gpt-oss checkpoint folder")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") != "gpt_oss":
        raise ConversionError(
            f"{cfg_file} has model_type={cfg.get('model_type')!r}; this converter handles 'gpt_oss' only"
        )
    return cfg


def _dtype_of(hf: dict) -> torch.dtype:
    name = hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"
    return getattr(torch, str(name).replace("torch.", ""))


def nemo_config_kwargs(hf: dict) -> dict:
    """Keyword arguments of NeMo's ``GPTOSSConfig`` that reproduce an HF gpt-oss config exactly."""
    n = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)
    ]
    if len(layer_types) != n:
        raise ConversionError(f"layer_types has {len(layer_types)} entries for {n} layers")
    rope = dict(hf.get("rope_scaling") or {})
    if rope and rope.get("rope_type", rope.get("type")) != "yarn":
        raise ConversionError(f"rope_scaling type {rope.get('rope_type')!r} is not YaRN; gpt-oss uses YaRN")
    if not hf.get("attention_bias", True):
        raise ConversionError("attention_bias=False is not gpt-oss: its attention projections carry biases")
    dtype = _dtype_of(hf)
    has_window = any(t == "sliding_attention" for t in layer_types)
    kwargs = dict(
        num_layers=n,
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        moe_ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=hf["num_attention_heads"],
        num_query_groups=hf["num_key_value_heads"],
        kv_channels=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_moe_experts=hf["num_local_experts"],
        moe_router_topk=hf.get("num_experts_per_tok", hf.get("experts_per_token")),
        vocab_size=hf["vocab_size"],
        layernorm_epsilon=hf.get("rms_norm_eps", 1e-5),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
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


# --------------------------------------------------------------------------------------------- weights


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """MXFP4 -> dense: ``blocks [..., G, 16]`` uint8 (two e2m1 nibbles, low first) and ``scales [..., G]``
    (uint8 e8m0, bias 127) -> ``[..., G * 32]``. For gpt-oss experts the result is ``[E, out, in]``."""
    if blocks.shape[:-1] != scales.shape:
        raise ConversionError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    lo = lut[(blocks & 0x0F).long()]
    hi = lut[(blocks >> 4).long()]
    vals = torch.stack((lo, hi), dim=-1).flatten(-2)  # [..., G, 32]
    vals = torch.ldexp(vals, scales.to(torch.int32).unsqueeze(-1) - 127)
    return vals.flatten(-2).to(dtype)


def iter_hf_tensors(path: str | Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of an HF gpt-oss checkpoint, one tensor at a time, in the HF BF16 layout.

    MXFP4 ``*_blocks``/``*_scales`` pairs are dequantised and transposed to ``[E, in, out]``, so callers see
    one layout whatever the source. No pickle is ever loaded: only ``*.safetensors``.
    """
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"no *.safetensors in {path}; expected a Hugging Face checkpoint folder")
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            for key in keys:
                if key.endswith("_scales"):
                    continue
                if key.endswith("_blocks"):
                    scale_key = key[: -len("_blocks")] + "_scales"
                    if scale_key not in keys:
                        raise ConversionError(f"{file.name}: {key} has no {scale_key} beside it")
                    dense = dequantize_mxfp4(
                        f.get_tensor(key), f.get_tensor(scale_key), dtype or torch.bfloat16
                    )
                    yield key[: -len("_blocks")], dense.transpose(-1, -2).contiguous()
                else:
                    t = f.get_tensor(key)
                    yield key, t if dtype is None else t.to(dtype)


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
    heads, groups, hd = _qkv_dims(cfg)
    rest = qkv.shape[1:]
    per = heads // groups * hd
    g = qkv.reshape(groups, per + 2 * hd, *rest)
    q, k, v = torch.split(g, [per, hd, hd], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


class McoreNames:
    """Parameter names of megatron-core's GPT model for one layer, in either module layout.

    With Transformer Engine the norms are fused into the next linear (``linear_qkv.layer_norm_weight``) and
    experts are grouped (``experts.linear_fc1.weight{e}``); the local (CPU) spec has separate norms and
    sequential experts (``experts.local_experts.{e}.linear_fc1.weight``).
    """

    def __init__(self, target_keys):
        keys = set(target_keys)
        self.fused_norm = any(k.endswith("self_attention.linear_qkv.layer_norm_weight") for k in keys)
        self.grouped = any(".mlp.experts.linear_fc1.weight" in k for k in keys)

    def input_norm(self, p):
        return (
            f"{p}.self_attention.linear_qkv.layer_norm_weight"
            if self.fused_norm
            else f"{p}.input_layernorm.weight"
        )

    def mlp_norm(self, p):
        return f"{p}.pre_mlp_layernorm.weight"

    def expert(self, p, e, fc, kind):
        if self.grouped:
            return f"{p}.mlp.experts.{fc}.{kind}{e}"
        return f"{p}.mlp.experts.local_experts.{e}.{fc}.{kind}"


def hf_to_mcore(hf: Mapping[str, torch.Tensor], cfg, names: McoreNames) -> dict[str, torch.Tensor]:
    """Convert an HF gpt-oss state dict (HF BF16 layout) to megatron-core names and layouts."""
    out = {
        "embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
        "decoder.final_layernorm.weight": hf["model.norm.weight"],
    }
    if not cfg.share_embeddings_and_output_weights:
        out["output_layer.weight"] = hf["lm_head.weight"]
    for i in range(cfg.num_layers):
        h, p = f"model.layers.{i}", f"decoder.layers.{i}"
        out[names.input_norm(p)] = hf[f"{h}.input_layernorm.weight"]
        out[names.mlp_norm(p)] = hf[f"{h}.post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[f"{p}.self_attention.linear_qkv.{kind}"] = merge_qkv(
                *(hf[f"{h}.self_attn.{x}_proj.{kind}"] for x in "qkv"), cfg
            )
            out[f"{p}.self_attention.linear_proj.{kind}"] = hf[f"{h}.self_attn.o_proj.{kind}"]
            out[f"{p}.mlp.router.{kind}"] = hf[f"{h}.mlp.router.{kind}"]
        out[f"{p}.self_attention.core_attention.softmax_offset"] = hf[f"{h}.self_attn.sinks"]
        gate_up, gate_up_b = hf[f"{h}.mlp.experts.gate_up_proj"], hf[f"{h}.mlp.experts.gate_up_proj_bias"]
        down, down_b = hf[f"{h}.mlp.experts.down_proj"], hf[f"{h}.mlp.experts.down_proj_bias"]
        for e in range(cfg.num_moe_experts):
            out[names.expert(p, e, "linear_fc1", "weight")] = _interleave_to_halves(gate_up[e].t())
            out[names.expert(p, e, "linear_fc1", "bias")] = _interleave_to_halves(gate_up_b[e])
            out[names.expert(p, e, "linear_fc2", "weight")] = down[e].t()
            out[names.expert(p, e, "linear_fc2", "bias")] = down_b[e]
    return out


def mcore_to_hf(mc: Mapping[str, torch.Tensor], cfg, names: McoreNames) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_mcore`: megatron-core state dict -> HF gpt-oss names and BF16 layout."""
    out = {
        "model.embed_tokens.weight": mc["embedding.word_embeddings.weight"],
        "model.norm.weight": mc["decoder.final_layernorm.weight"],
        "lm_head.weight": mc["embedding.word_embeddings.weight"]
        if cfg.share_embeddings_and_output_weights
        else mc["output_layer.weight"],
    }
    for i in range(cfg.num_layers):
        h, p = f"model.layers.{i}", f"decoder.layers.{i}"
        out[f"{h}.input_layernorm.weight"] = mc[names.input_norm(p)]
        out[f"{h}.post_attention_layernorm.weight"] = mc[names.mlp_norm(p)]
        for kind in ("weight", "bias"):
            q, k, v = split_qkv(mc[f"{p}.self_attention.linear_qkv.{kind}"], cfg)
            out[f"{h}.self_attn.q_proj.{kind}"] = q
            out[f"{h}.self_attn.k_proj.{kind}"] = k
            out[f"{h}.self_attn.v_proj.{kind}"] = v
            out[f"{h}.self_attn.o_proj.{kind}"] = mc[f"{p}.self_attention.linear_proj.{kind}"]
            out[f"{h}.mlp.router.{kind}"] = mc[f"{p}.mlp.router.{kind}"]
        out[f"{h}.self_attn.sinks"] = mc[f"{p}.self_attention.core_attention.softmax_offset"]
        experts = range(cfg.num_moe_experts)
        out[f"{h}.mlp.experts.gate_up_proj"] = torch.stack(
            [_halves_to_interleave(mc[names.expert(p, e, "linear_fc1", "weight")]).t() for e in experts]
        )
        out[f"{h}.mlp.experts.gate_up_proj_bias"] = torch.stack(
            [_halves_to_interleave(mc[names.expert(p, e, "linear_fc1", "bias")]) for e in experts]
        )
        out[f"{h}.mlp.experts.down_proj"] = torch.stack(
            [mc[names.expert(p, e, "linear_fc2", "weight")].t() for e in experts]
        )
        out[f"{h}.mlp.experts.down_proj_bias"] = torch.stack(
            [mc[names.expert(p, e, "linear_fc2", "bias")] for e in experts]
        )
    return {k: v.contiguous() for k, v in out.items()}


def count_parameters(hf_config) -> int:
    """Total parameters of a gpt-oss from its config alone (nothing is allocated)."""
    hf = load_hf_config(hf_config)
    h, inter, n = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    heads, groups = hf["num_attention_heads"], hf["num_key_value_heads"]
    hd = hf.get("head_dim") or h // heads
    e, v = hf["num_local_experts"], hf["vocab_size"]
    q, kv = heads * hd, groups * hd
    attn = h * (q + 2 * kv) + (q + 2 * kv) + q * h + h + heads  # qkv w+b, o w+b, sinks
    experts = e * (h * 2 * inter + 2 * inter + inter * h + h)
    router = e * h + e
    layer = attn + experts + router + 2 * h  # two RMSNorm weights
    embeddings = v * h * (1 if hf.get("tie_word_embeddings") else 2)
    return n * layer + embeddings + h  # + final norm
