"""Every per-architecture fact edgepack needs, in one table.

Writers read these rows; no writer tests the architecture by name. Adding an architecture is
adding a row (and its tests), in the spirit of gguf-py's constants and tensor maps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gguf

from packager.errors import UnsupportedError

Config = Mapping[str, Any]


def _rope_params(config: Config) -> dict[str, Any]:
    """Return the rope parameters of the full-attention layers, whatever the config's vintage."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "full_attention" in params:
        return dict(params["full_attention"])
    if "rope_theta" not in params and "rope_theta" in config:
        params["rope_theta"] = config["rope_theta"]
    return params


def _sliding_rope_theta(config: Config) -> float | None:
    params = config.get("rope_parameters") or {}
    sliding = params.get("sliding_attention") if isinstance(params, dict) else None
    if sliding:
        return sliding.get("rope_theta")
    return config.get("rope_local_base_freq")


def _sliding_layers(config: Config) -> list[bool] | None:
    """Per-layer sliding-window flags from layer_types.

    llama.cpp otherwise assumes Gemma 3's default pattern (every 6th layer global), which is
    wrong for any checkpoint that declares another layout.
    """
    layer_types = config.get("layer_types")
    if not layer_types:
        return None
    return [t == "sliding_attention" for t in layer_types]


def _linear_rope_factor(config: Config) -> float | None:
    """Gemma 3 4B and up scale the full-attention layers' positions linearly (factor 8); llama.cpp reads the
    factor from metadata and applies it to the global layers only, as transformers does."""
    params = _rope_params(config)
    return float(params["factor"]) if str(params.get("rope_type", "")).lower() == "linear" else None


def _head_dim(config: Config) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


@dataclass(frozen=True)
class GGUFKey:
    """One GGUF metadata entry: which GGUFWriter method, and how to read its value from config.json.

    A getter returning None means "absent for this checkpoint" and the key is not written.
    """

    writer_method: str
    value: Callable[[Config], Any]


def _key(method: str, *config_keys: str, default: Any = None) -> GGUFKey:
    def read(config: Config) -> Any:
        for k in config_keys:
            if config.get(k) is not None:
                return config[k]
        return default

    return GGUFKey(method, read)


# Hyper-parameters llama.cpp reads for every decoder-only architecture we support.
_COMMON_GGUF_KEYS: tuple[GGUFKey, ...] = (
    _key("add_block_count", "num_hidden_layers"),
    _key("add_context_length", "max_position_embeddings"),
    _key("add_embedding_length", "hidden_size"),
    _key("add_feed_forward_length", "intermediate_size"),
    _key("add_head_count", "num_attention_heads"),
    _key("add_head_count_kv", "num_key_value_heads"),
    GGUFKey("add_rope_freq_base", lambda c: _rope_params(c).get("rope_theta")),
    _key("add_layer_norm_rms_eps", "rms_norm_eps"),
    _key("add_key_length", "head_dim"),
    _key("add_value_length", "head_dim"),
)


@dataclass(frozen=True)
class TensorShape:
    """One tensor a checkpoint must hold: its Hugging Face name ("{layer}" once per decoder layer) and its
    shape in config dimensions (see config_dimensions); an optional one is checked only when present."""

    name: str
    dims: tuple[str, ...]
    required: bool = True


def config_dimensions(config: Config) -> dict[str, int]:
    """Return the named dimensions tensor shapes are written in, read from a config within bounds."""
    heads = config["num_attention_heads"]
    head_dim = _head_dim(config)
    return {
        "vocab": config["vocab_size"],
        "hidden": config["hidden_size"],
        "ffn": config["intermediate_size"],
        "head": head_dim,
        "q": heads * head_dim,
        "kv": (config.get("num_key_value_heads") or heads) * head_dim,
    }


# Every decoder-only architecture we support: embedding, final norm, optional untied head, and per
# layer two norms, the four attention projections and the gated MLP.
_DECODER_TENSORS: tuple[TensorShape, ...] = (
    TensorShape("model.embed_tokens.weight", ("vocab", "hidden")),
    TensorShape("model.norm.weight", ("hidden",)),
    TensorShape("lm_head.weight", ("vocab", "hidden"), required=False),
    TensorShape("model.layers.{layer}.input_layernorm.weight", ("hidden",)),
    TensorShape("model.layers.{layer}.post_attention_layernorm.weight", ("hidden",)),
    TensorShape("model.layers.{layer}.self_attn.q_proj.weight", ("q", "hidden")),
    TensorShape("model.layers.{layer}.self_attn.k_proj.weight", ("kv", "hidden")),
    TensorShape("model.layers.{layer}.self_attn.v_proj.weight", ("kv", "hidden")),
    TensorShape("model.layers.{layer}.self_attn.o_proj.weight", ("hidden", "q")),
    TensorShape("model.layers.{layer}.mlp.gate_proj.weight", ("ffn", "hidden")),
    TensorShape("model.layers.{layer}.mlp.up_proj.weight", ("ffn", "hidden")),
    TensorShape("model.layers.{layer}.mlp.down_proj.weight", ("hidden", "ffn")),
)


@dataclass(frozen=True)
class ArchitectureSpec:
    """What every writer needs to know about one Hugging Face model type."""

    name: str
    model_types: tuple[str, ...]
    hf_classes: tuple[str, ...]
    gguf_arch: gguf.MODEL_ARCH
    gguf_keys: tuple[GGUFKey, ...]
    # GGUF stores Gemma's RMSNorm gain as (w + 1): llama.cpp multiplies by the stored value.
    norm_offset: float = 0.0
    # llama.cpp's rope expects Q/K rows interleaved differently from HF's rotate_half layout.
    permute_qk: bool = False
    # Gemma multiplies token embeddings by sqrt(hidden_size); runtimes apply it, writers keep raw rows.
    embedding_scale_sqrt_hidden: bool = False
    # Drop embedding rows past the tokenizer's vocabulary (llama.cpp's converter does this for Gemma).
    truncate_embedding_to_tokenizer: bool = False
    # llama3-style rope scaling is carried as an extra rope_freqs tensor.
    llama3_rope_freqs: bool = False
    # The rope_type values of config.json this architecture's writers carry ("linear": a factor in metadata).
    rope_types: tuple[str, ...] = ("default",)
    # Tokens that end a turn besides eos, looked up by text in the tokenizer.
    end_of_turn_tokens: tuple[str, ...] = ()
    # Why fp16 execution is risky (a model fact; fp16 runtimes and GPU delegates care): shown by doctor.
    fp16_risk: str = ""
    # The tensors a checkpoint must hold and their shapes, checked when it is opened.
    tensors: tuple[TensorShape, ...] = _DECODER_TENSORS
    # config.json keys that must be present: transformers' defaults for them are another model's.
    required_config: tuple[str, ...] = ()
    # The attention kinds config.json's layer_types may name (transformers crashes on any other).
    layer_types: tuple[str, ...] = ("full_attention",)
    # llama.cpp aborts (GGML_ASSERT is_swa_any) on this architecture when no layer is sliding-window.
    needs_sliding_layer: bool = False

    def expected_tensors(self, config: Config) -> list[tuple[str, tuple[int, ...], bool]]:
        """Return (name, shape, required) of every tensor a checkpoint with this config must hold."""
        dims = config_dimensions(config)
        out = []
        for t in self.tensors:
            layers = range(config["num_hidden_layers"]) if "{layer}" in t.name else [None]
            shape = tuple(dims[d] for d in t.dims)
            out += [(t.name.format(layer=i), shape, t.required) for i in layers]
        return out


def _llama3_rope_type(config: Config) -> bool:
    return str(_rope_params(config).get("rope_type", "")).lower() == "llama3"


ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        name="gemma3",
        model_types=("gemma3_text",),
        hf_classes=("Gemma3ForCausalLM",),
        gguf_arch=gguf.MODEL_ARCH.GEMMA3,
        gguf_keys=(
            *_COMMON_GGUF_KEYS,
            GGUFKey("add_rope_freq_base_swa", _sliding_rope_theta),
            _key("add_final_logit_softcapping", "final_logit_softcapping"),
            _key("add_sliding_window", "sliding_window"),
            GGUFKey("add_sliding_window_pattern", _sliding_layers),
            GGUFKey("add_rope_scaling_type",
                    lambda c: gguf.RopeScalingType.LINEAR if _linear_rope_factor(c) is not None else None),
            GGUFKey("add_rope_scaling_factor", _linear_rope_factor),
        ),
        rope_types=("default", "linear"),
        norm_offset=1.0,
        embedding_scale_sqrt_hidden=True,
        truncate_embedding_to_tokenizer=True,
        end_of_turn_tokens=("<end_of_turn>",),
        fp16_risk="residual stream exceeds fp16 range (Gemma 3 270M reaches ~1e5 > 65504)",
        # Gemma 3's class defaults (head_dim 256, ...) are the 4B model's; llama.cpp's gemma3 needs a sliding layer.
        required_config=("head_dim", "sliding_window", "query_pre_attn_scalar"),
        layer_types=("sliding_attention", "full_attention"),
        needs_sliding_layer=True,
        # Norms around both branches and per-head q/k norms.
        tensors=(
            *_DECODER_TENSORS,
            TensorShape("model.layers.{layer}.pre_feedforward_layernorm.weight", ("hidden",)),
            TensorShape("model.layers.{layer}.post_feedforward_layernorm.weight", ("hidden",)),
            TensorShape("model.layers.{layer}.self_attn.q_norm.weight", ("head",)),
            TensorShape("model.layers.{layer}.self_attn.k_norm.weight", ("head",)),
        ),
    ),
    ArchitectureSpec(
        name="llama",
        model_types=("llama",),
        hf_classes=("LlamaForCausalLM",),
        gguf_arch=gguf.MODEL_ARCH.LLAMA,
        gguf_keys=(
            *_COMMON_GGUF_KEYS,
            _key("add_vocab_size", "vocab_size"),
            GGUFKey("add_rope_dimension_count", _head_dim),
        ),
        permute_qk=True,
        llama3_rope_freqs=True,
        rope_types=("default", "llama3"),
        end_of_turn_tokens=("<|eot_id|>", "<|im_end|>", "<|end_of_text|>"),
        fp16_risk="RMSNorm squares overflow fp16 when the norm statistics run in fp16",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def spec_for_config(config: Config, config_path: str = "config.json") -> ArchitectureSpec:
    """Return the table row for a config.json, or raise a clear UnsupportedError."""
    model_type = config.get("model_type")
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedError(
        f"{config_path}: model_type {model_type!r} is not supported. edgepack converts these "
        f"architectures: {', '.join(supported_model_types())}. Check that the folder holds a text-only "
        "decoder checkpoint of one of them (a multimodal Gemma 3 needs its language model saved on its own)."
    )


def uses_llama3_rope(spec: ArchitectureSpec, config: Config) -> bool:
    return spec.llama3_rope_freqs and _llama3_rope_type(config)


def full_rope_params(config: Config) -> dict[str, Any]:
    return _rope_params(config)
