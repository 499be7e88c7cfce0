"""How mlc-llm names and lays out each architecture's parameters, keyed by architecture name.

An architecture without a row here gets no WebLLM runtime (wllama, over the shared GGUF, still works).
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.architectures import ArchitectureSpec
from packager.errors import UnsupportedError


@dataclass(frozen=True)
class MLCNaming:
    """How mlc-llm names and lays out one architecture's parameters (mlc_llm/model/<arch>/*_loader.py).

    `model_type` is mlc-llm's model registry name, `param_prefix` the prefix of every parameter name,
    `fused` the projections mlc-llm concatenates along the output dimension (fused name, HF names in
    order), `norm_offset` the offset added to norm gains, `tied_lm_head` whether lm_head is always tied
    (None: config's tie_word_embeddings decides), and `sliding_window_period` the fixed local/global
    attention period mlc-llm compiles in (None: it reads nothing like it).
    """

    model_type: str
    param_prefix: str
    fused: tuple[tuple[str, tuple[str, ...]], ...]
    norm_offset: float = 0.0
    tied_lm_head: bool | None = None
    sliding_window_period: int | None = None
    # HF config keys copied into mlc-chat-config.json's model_config (under text_config when nested).
    model_config_keys: tuple[str, ...] = ()
    nested_text_config: bool = False


MLC_NAMING: dict[str, MLCNaming] = {
    # mlc-llm's gemma3 loader: q/k/v stay separate, gate+up are fused, every norm is w+1, the
    # embedding doubles as lm_head, and layer i is global iff (i + 1) % 6 == 0.
    "gemma3": MLCNaming(
        model_type="gemma3_text",
        param_prefix="language_model.",
        fused=(("gate_up_proj", ("gate_proj", "up_proj")),),
        norm_offset=1.0,
        tied_lm_head=True,
        sliding_window_period=6,
        model_config_keys=("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_activation",
                           "query_pre_attn_scalar", "sliding_window", "max_position_embeddings",
                           "vocab_size", "attention_bias"),
        nested_text_config=True,
    ),
    # mlc-llm's llama loader: q/k/v fused as qkv_proj and gate/up as gate_up_proj, rows in HF
    # order (no rope permutation: mlc-llm uses the rotate_half layout).
    "llama": MLCNaming(
        model_type="llama",
        param_prefix="",
        fused=(("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj"))),
        model_config_keys=("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                           "rms_norm_eps", "vocab_size", "tie_word_embeddings", "num_key_value_heads",
                           "head_dim", "max_position_embeddings", "rope_scaling"),
    ),
}


def mlc_naming(spec: ArchitectureSpec) -> MLCNaming:
    """Return mlc-llm's naming of `spec`'s architecture, or raise UnsupportedError (no WebLLM for it)."""
    naming = MLC_NAMING.get(spec.name)
    if naming is None:
        raise UnsupportedError(f"architecture {spec.name} has no MLC naming in targets/web/mlc/naming.py; "
                               "the WebLLM runtime is not available for it (--runtime wllama is).")
    return naming
