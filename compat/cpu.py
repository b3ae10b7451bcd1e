"""Run the NeMo 2 / megatron-core gpt-oss path on a machine without CUDA.

Applied only when CUDA is absent (`enable()` returns at once on a GPU machine and changes nothing there).
Two kinds of measures, each with the upstream file:line it addresses. Every one was verified on nemo_toolkit
2.7.3, megatron-core 0.15.3, torch 2.13.0 and transformers 4.57 (`compat.versions.VERIFIED`, checked when
`compat` is imported):

- `CONFIG`: model-config values that avoid CUDA-only code paths; the recipes apply them to the model config.
- `enable()`: small runtime patches for code that assumes a CUDA device even when nothing needs one, and the
  two measures tensor parallelism needs without Transformer Engine (`_tensor_parallel_without_te`).

Examples:
    python -c "import compat.cpu as c; c.enable(); print(c.CONFIG)"
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch

# Model-config values for CPU; each avoids a CUDA-only path.
CONFIG = {
    # Weights are created on the host (megatron-core initialises on the current CUDA device otherwise).
    "use_cpu_initialization": True,
    # Grouped GEMM needs Transformer Engine / grouped_gemm kernels; sequential experts are plain torch.
    "moe_grouped_gemm": False,
    # The alltoall dispatcher creates a torch.cuda.Stream (moe/token_dispatcher.py:445).
    "moe_token_dispatcher_type": "allgather",
    # Fused kernels are CUDA/TE only.
    "moe_permute_fusion": False,
    "bias_activation_fusion": False,
    "bias_dropout_fusion": False,
    "masked_softmax_fusion": False,
    "apply_rope_fusion": False,
    "gradient_accumulation_fusion": False,
    "cross_entropy_loss_fusion": False,
    "persist_layer_norm": False,
    # The bf16 optimizer wrapper checks torch.cuda.BFloat16Tensor (optimizer/optimizer.py:667): train in fp32.
    "bf16": False,
    "fp16": False,
    "params_dtype": torch.float32,
    "pipeline_dtype": torch.float32,
    "autocast_dtype": torch.float32,
}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def config_overrides(cuda: bool | None = None) -> dict:
    """`CONFIG` plus the local attention backend when CUDA is absent (``cuda``: as if it were present or not),
    else nothing.

    Pass these as constructor arguments of the model config: megatron-core validates them in
    ``__post_init__`` and NeMo records only constructor arguments in a checkpoint's io context.
    """
    if cuda_available() if cuda is None else cuda:
        return {}
    from megatron.core.transformer.enums import AttnBackend

    # Without Transformer Engine the local (unfused) attention is the only backend.
    return {**CONFIG, "attention_backend": AttnBackend.local}


# The `CONFIG` entries that make a CPU run compute in fp32. Conversions leave them out: a checkpoint keeps its
# source's dtype on every host, and a model loaded on the host is widened to fp32 (exact) by `compute_dtype`.
DTYPE_KEYS = ("bf16", "fp16", "params_dtype", "pipeline_dtype", "autocast_dtype")


def device_overrides(cuda: bool | None = None) -> dict:
    """`config_overrides` without the dtype: what a conversion records in the checkpoint it writes."""
    return {k: v for k, v in config_overrides(cuda).items() if k not in DTYPE_KEYS}


def compute_dtype(config, cuda: bool | None = None) -> None:
    """Set a model config loaded from a checkpoint to compute in fp32 when CUDA is absent (else unchanged).

    A BF16 checkpoint then loads into fp32 parameters (megatron-core's loader copies each tensor into the
    parameter, widening it exactly); the checkpoint on disk keeps its own dtype.
    """
    if cuda_available() if cuda is None else cuda:
        return
    for key in DTYPE_KEYS:
        setattr(config, key, CONFIG[key])


_ENABLED = False


def enable() -> None:
    """Patch the CUDA-only code paths that the CPU run reaches; a no-op with CUDA or when already done."""
    global _ENABLED
    if _ENABLED or cuda_available():
        return
    _ENABLED = True
    _patch_megatron()
    _patch_nemo()


def _noop(*args, **kwargs):
    return None


class _HostTorch(types.ModuleType):
    """``torch`` as seen by a module whose code says ``device="cuda"``: tensor factories get the host instead.

    Installed as the module-global ``torch`` of the megatron-core modules listed in `_CUDA_LITERAL_MODULES`;
    every other attribute is the real torch.
    """

    _FACTORIES = (
        "tensor",
        "zeros",
        "ones",
        "empty",
        "full",
        "arange",
        "zeros_like",
        "ones_like",
        "empty_like",
    )

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name not in self._FACTORIES:
            return attr

        @functools.wraps(attr)
        def factory(*args, **kwargs):
            device = kwargs.get("device")
            if device is not None and str(device).startswith("cuda"):
                kwargs["device"] = "cpu"
            kwargs.pop("pin_memory", None)  # pinned memory exists only for an accelerator
            return attr(*args, **kwargs)

        return factory


# megatron-core modules with device="cuda" literals on the training path.
_CUDA_LITERAL_MODULES = (
    "megatron.core.optimizer.optimizer",  # :469, :477, :481, :903 (loss scale, found-inf flags)
    "megatron.core.optimizer.clip_grads",  # grad-norm buffers
    "megatron.core.pipeline_parallel.schedules",  # :573 (total token count)
    "megatron.core.transformer.moe.moe_utils",  # :998 (aux-loss tracker)
    "megatron.core.utils",  # :1029 (global memory buffer)
    "megatron.core.distributed.finalize_model_grads",  # token-count reduction
    "nemo.lightning.pytorch.plugins.data_sampler",  # :192, :212 (pinned batch-size tensors)
    "nemo.lightning.pytorch.strategies.megatron_strategy",  # :801-888 (pinned loss reductions)
)


def _patch_megatron() -> None:
    import importlib
    import multiprocessing

    host_torch = _HostTorch()
    for name in _CUDA_LITERAL_MODULES:
        importlib.import_module(name).torch = host_torch

    import megatron.core.dist_checkpointing.strategies.filesystem_async as fs_async
    import megatron.core.tensor_parallel.random as mrandom

    # Each checkpoint save starts a spawn-mode multiprocessing Manager (filesystem_async.py:54), which
    # re-imports the entry script and the whole NeMo stack: ~15 s per save on two cores. The manager only
    # serves a results queue to forked writers; a fork-mode manager serves it as well, at no import cost.
    def results_queue():
        if fs_async._results_queue is None:
            fs_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()
        return fs_async._results_queue

    fs_async._get_write_results_queue = results_queue

    # The unfused softmax builds its causal and sliding-window masks with device="cuda" literals
    # (transformer/utils.py:35,41); the same masks on the host. True means masked, as upstream.
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.transformer.utils as tutils

    @functools.lru_cache(maxsize=32)
    def causal_mask(sq):
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    @functools.lru_cache(maxsize=32)
    def sliding_window_causal_mask(sq, skv, window_size):
        m = torch.ones(sq, skv, dtype=torch.bool)
        keep = torch.tril(
            torch.triu(m, diagonal=skv - sq - window_size[0]), diagonal=skv - sq + window_size[1]
        )
        return ~keep

    for module in (tutils, fused_softmax):
        module.get_default_causal_mask = causal_mask
        module.get_sliding_window_causal_mask = sliding_window_causal_mask

    # Without Transformer Engine, moe_utils.py:958 reads te_general_gemm, a name it only binds when TE imports
    # (NameError). Binding it to None selects the torch.addmm path written for that case.
    import megatron.core.transformer.moe.moe_utils as moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None

    # Sequential experts add their bias in place onto RowParallelLinear's output (transformer/mlp.py:231);
    # that output comes straight out of an autograd Function, which returns its input as a view over a group
    # of one (_ReduceFromModelParallelRegion; _ReduceScatterToSequenceParallelRegion, reached when sequence
    # parallel is on and the experts are not expert-parallel, tensor_parallel/layers.py:1270), and torch
    # forbids modifying that in place under grad. TE's grouped experts never take this path. A copy of the
    # reduced output makes the in-place add legal and leaves the values unchanged.
    import megatron.core.tensor_parallel.layers as tp_layers

    reduce = tp_layers.reduce_from_tensor_model_parallel_region
    reduce_scatter = tp_layers.reduce_scatter_to_sequence_parallel_region

    def reduce_then_copy(input_, group=None):
        return reduce(input_, group=group).clone()

    def reduce_scatter_then_copy(input_, *args, **kwargs):
        return reduce_scatter(input_, *args, **kwargs).clone()

    tp_layers.reduce_from_tensor_model_parallel_region = reduce_then_copy
    tp_layers.reduce_scatter_to_sequence_parallel_region = reduce_scatter_then_copy

    # CudaRNGStatesTracker.fork swaps CUDA RNG states (tensor_parallel/random.py:209); on CPU there are none,
    # and megatron_init only seeds the tracker when a GPU exists. Forking becomes a plain context.
    tracker_cls = mrandom.CudaRNGStatesTracker

    @contextlib.contextmanager
    def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
        yield

    tracker_cls.fork = fork
    tracker_cls.add = lambda self, name, seed: self.states_.__setitem__(name, seed)
    mrandom.model_parallel_cuda_manual_seed = lambda *a, **k: torch.manual_seed(a[0] if a else 0)

    _tensor_parallel_without_te()


class SequenceParallelRMSNorm:
    """megatron-core's ``WrappedTorchNorm`` for RMSNorm, with sequence parallelism: ``torch.nn.RMSNorm`` whose
    weight carries ``sequence_parallel`` (as megatron's fused norms set it, fusions/fused_layer_norm.py:119).

    ``WrappedTorchNorm`` refuses sequence parallelism (transformer/torch_norm.py:32), and megatron-core requires
    it for MoE with TP > 1 (transformer/moe/moe_layer.py:266). RMSNorm works per token, so a sequence shard is
    normalised exactly; the weight's gradient is then partial on each TP rank, and the flag makes
    ``finalize_model_grads`` (distributed/finalize_model_grads.py:346) sum it over the TP group. Every other
    configuration goes to ``WrappedTorchNorm`` with its own checks. Same parameter names as upstream.
    """

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **kwargs):
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        if (
            config.normalization != "RMSNorm"
            or not config.sequence_parallel
            or config.layernorm_zero_centered_gamma
            or config.persist_layer_norm
            or config.memory_efficient_layer_norm
        ):
            return WrappedTorchNorm(config, hidden_size, eps=eps, **kwargs)
        norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        norm.weight.sequence_parallel = True
        return norm


def _tensor_parallel_without_te() -> None:
    """Tensor parallelism (TP > 1, so sequence parallel with MoE) on the local, Transformer-Engine-free modules.

    - The norms: the layers' two norms through the layer spec (NeMo's ``default_layer_spec`` calls
      ``local_layer_spec`` when TE is absent, nemo/collections/llm/gpt/model/base.py:222, so the model config
      and its checkpoints keep upstream's spec), the final norm through ``transformer_block.LayerNormImpl``
      (transformer/transformer_block.py:69, which builds it whenever the spec is a layer's, :258); NeMo's
      ``configure_model`` cannot take a block spec with the local attention backend (base.py:392-393).
    - The experts' ``linear_fc2.bias``: RowParallelLinear flags its bias ``sequence_parallel``
      (tensor_parallel/layers.py:1208) also in an expert, whose output is never reduce-scattered
      (``explicit_expert_comm``, :1266-1268). ``finalize_model_grads`` then sums the bias gradients over the
      dense TP group, i.e. of DIFFERENT experts with EP = TP (and twice the same one with EP = 1). The flag is
      cleared; the expert-data-parallel reduction stays as upstream (``allreduce``, :1207).
    """
    import megatron.core.transformer.moe.experts as experts
    import megatron.core.transformer.transformer_block as block
    import nemo.collections.llm.gpt.model.base as nemo_gpt

    local_layer_spec = nemo_gpt.local_layer_spec

    @functools.wraps(local_layer_spec)
    def layer_spec(config):
        spec = local_layer_spec(config)
        if config.normalization == "RMSNorm":
            spec.submodules.input_layernorm = SequenceParallelRMSNorm
            spec.submodules.pre_mlp_layernorm = SequenceParallelRMSNorm
        return spec

    nemo_gpt.local_layer_spec = layer_spec
    block.LayerNormImpl = SequenceParallelRMSNorm

    init = experts.SequentialMLP.__init__

    @functools.wraps(init)
    def sequential_mlp_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for expert in self.local_experts:
            clear_expert_bias_flag(expert)

    experts.SequentialMLP.__init__ = sequential_mlp_init


def clear_expert_bias_flag(expert: torch.nn.Module) -> None:
    """Clear ``sequence_parallel`` on one local expert's ``linear_fc2.bias`` (see `_tensor_parallel_without_te`)."""
    bias = getattr(expert.linear_fc2, "bias", None)
    if bias is not None and getattr(bias, "sequence_parallel", False):
        bias.sequence_parallel = False


def weights_left_to_the_restore(model) -> None:
    """Build ``model`` (a NeMo model whose ``configure_model`` has not run) without drawing its weights, when the
    restore that follows overwrites every one. A no-op with CUDA, where weights are drawn in place on the device.

    megatron-core's host initialisation (``use_cpu_initialization``, `CONFIG`) draws each weight into a full-size
    master copy, then copies this rank's part through a concatenated temporary (tensor_parallel/layers.py:169-183),
    so the largest weight is held three times at once: gpt-oss's output layer (201,088 x 2,880 in fp32, 2.3 GB).
    That was the peak of a one-layer 20b-shaped LoRA run, 4.6 GB above its weights, and drawing took 33 s of its
    97 s (bench/bench_plan_memory.py). Here the weights are allocated undrawn (``perform_initialization=False``)
    and filled with NaN, so that a weight the restore missed shows as a NaN loss at the first step rather than as
    plausible random values. The flag is set back after the build: NeMo's LoRA adapters, built later from the
    same config (nemo/collections/llm/peft/utils.py:285), are drawn as before.
    """
    if cuda_available():
        return
    build = model.configure_model

    @functools.wraps(build)
    def configure_model(*args, **kwargs):
        if hasattr(model, "module"):  # built already (NeMo calls it again): nothing to build
            return build(*args, **kwargs)
        config = model.config
        drawn = config.perform_initialization
        config.perform_initialization = False
        try:
            result = build(*args, **kwargs)
        finally:
            config.perform_initialization = drawn
        with torch.no_grad():
            for param in model.parameters():
                if param.is_floating_point():
                    param.fill_(float("nan"))
        return result

    model.configure_model = configure_model


class _NoTELinear:
    """Stands for transformer_engine.pytorch.Linear where TE is absent: no module is an instance of it."""


def _patch_nemo() -> None:
    import importlib.util

    import nemo.collections.llm.peft.lora as lora
    import nemo.collections.llm.peft.utils as peft_utils
    import nemo.lightning.io.pl as nemo_pl

    if importlib.util.find_spec("transformer_engine") is None:
        # LoRA.transform compares every module with te.Linear (peft/lora.py:703), and te is a placeholder that
        # raises on any attribute when TE is absent.
        lora.te = types.SimpleNamespace(Linear=_NoTELinear)
        # peft/utils.py:54 concludes TE is present because megatron-core's TE extension module imports with
        # MagicMock stand-ins; the adapters must take the plain megatron-core linear path.
        peft_utils.HAVE_TE = False

    # After a load, NeMo moves tensors onto the current CUDA device and asserts CUDA is initialised
    # (nemo/lightning/io/pl.py:494); host tensors need no move.
    nemo_pl._fix_tensors_device = lambda ckpt: ckpt
    # megatron-core uses torch.cuda.current_device() as a device in many places (yarn_rotary_pos_embedding.py:119,
    # moe_utils.py, optimizer.py); without CUDA the host is that device.
    torch.cuda.current_device = lambda: "cpu"
    # Batches are moved with .cuda(non_blocking=True) (nemo/collections/llm/gpt/model/base.py:103); on a
    # machine without CUDA they already are where they must be.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    # ... and with .to("cuda", non_blocking=True) (nemo/lightning/pytorch/plugins/data_sampler.py:212).
    to = torch.Tensor.to

    @functools.wraps(to)
    def to_host(self, *args, **kwargs):
        if args and isinstance(args[0], (str, torch.device)) and str(args[0]).startswith("cuda"):
            args = ("cpu", *args[1:])
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_host
    # DDP is initialised on a side stream (nemo/lightning/megatron_parallel.py:617); the host has one stream.
    torch.cuda.Stream = lambda *args, **kwargs: None
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()
    torch.cuda.current_stream = lambda *args, **kwargs: None
    # torch.cuda.synchronize / memory queries in callbacks and timers have no meaning without a device.
    torch.cuda.synchronize = _noop
    torch.cuda.empty_cache = _noop
    torch.cuda.reset_peak_memory_stats = _noop
    torch.cuda.max_memory_allocated = functools.partial(int, 0)
    torch.cuda.memory_allocated = functools.partial(int, 0)
