"""Sane bounds for the numbers in config.json, checked once when a checkpoint is opened, before any work.

A config.json outside these bounds is never a real model, and each kind of bad value fails late and
badly: a negative or NaN rms_norm_eps kills the process with llama.cpp's GGML_ASSERT, a million
layers hangs the build for minutes, a zero head count divides by zero deep in a writer. The bounds
are wide (several times any released model's value) so they only catch what cannot be a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packager.architectures import ArchitectureSpec, full_rope_params
from packager.errors import BadInputError, UnsupportedError

Config = Mapping[str, Any]


@dataclass(frozen=True)
class FieldBound:
    """What one config.json field may hold: "int" (a whole number), "float" (a number written with a decimal
    point, as transformers' typed configs demand), "number" (either), "table", "list", "flag" or "ids".

    `low_exclusive`: the value must be strictly above `low` (an epsilon or a frequency base of 0 is
    as broken as a negative one). `required`: the field must be present and not null.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False
    required: bool = False

    def problem(self, value: Any) -> str | None:
        """Return what is wrong with value ("must be ..."), or None when it is within bounds."""
        if self.kind == "flag":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "table":
            return None if isinstance(value, dict) else "must be a JSON object"
        if self.kind == "list":
            return None if isinstance(value, list) else "must be a JSON list"
        if self.kind == "ids":
            values = value if isinstance(value, list) else [value]
            if values and all(_whole(v) and 0 <= v < 2**31 for v in values):
                return None
            return "must be a token id (a whole number from 0) or a list of them"
        whole = self.kind == "int"
        is_number = isinstance(value, int) if whole else isinstance(value, int | float)
        if isinstance(value, bool) or not is_number or (isinstance(value, float) and not math.isfinite(value)):
            return f"must be {self.describe()}"
        too_low = self.low is not None and (value <= self.low if self.low_exclusive else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            return f"must be {self.describe()}"
        if self.kind == "float" and not isinstance(value, float):
            return f"must be written with a decimal point ({value}.0): transformers refuses a whole number here"
        return None

    def describe(self) -> str:
        what, fmt = ("a whole number", ",") if self.kind == "int" else ("a finite number", "g")
        low, high = format(self.low, fmt), format(self.high, fmt)
        return f"{what} above {low} and at most {high}" if self.low_exclusive else f"{what} from {low} to {high}"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Real models for scale: Gemma 3 270M (vocab 262,144, 18 layers), Llama 3.1 405B (126 layers,
# hidden 16,384, 128 heads, intermediate 53,248), Llama 4 (10M context).
CONFIG_BOUNDS: dict[str, FieldBound] = {
    "vocab_size": FieldBound("int", 1, 2**24, required=True),
    "hidden_size": FieldBound("int", 1, 2**17, required=True),
    "intermediate_size": FieldBound("int", 1, 2**20, required=True),
    "num_hidden_layers": FieldBound("int", 1, 1024, required=True),
    "num_attention_heads": FieldBound("int", 1, 1024, required=True),
    "num_key_value_heads": FieldBound("int", 1, 1024),
    "head_dim": FieldBound("int", 1, 2**13),
    "max_position_embeddings": FieldBound("int", 1, 2**24),
    "sliding_window": FieldBound("int", 1, 2**24),
    "rms_norm_eps": FieldBound("float", 0, 1, low_exclusive=True),
    "rope_theta": FieldBound("number", 1, 1e12),
    "rope_local_base_freq": FieldBound("number", 1, 1e12),
    "query_pre_attn_scalar": FieldBound("int", 1, 2**20),
    "final_logit_softcapping": FieldBound("float", 0, 1e6, low_exclusive=True),
    "attn_logit_softcapping": FieldBound("float", 0, 1e6, low_exclusive=True),
    "tie_word_embeddings": FieldBound("flag"),
    "rope_scaling": FieldBound("table"),
    "rope_parameters": FieldBound("table"),
    "layer_types": FieldBound("list"),
    "bos_token_id": FieldBound("int", 0, 2**31 - 1),
    "eos_token_id": FieldBound("ids"),
}

# The rope parameters of the full-attention layers, whichever key of config.json holds them.
# A frequency base below 1 is no model's, and llama.cpp's float32 rope disagrees with transformers' on it.
ROPE_BOUNDS: dict[str, FieldBound] = {
    "rope_theta": FieldBound("number", 1, 1e12),
    "factor": FieldBound("number", 0, 1e4, low_exclusive=True),
    "low_freq_factor": FieldBound("number", 0, 1e4, low_exclusive=True),
    "high_freq_factor": FieldBound("number", 0, 1e4, low_exclusive=True),
    "original_max_position_embeddings": FieldBound("int", 1, 2**24),
}

# The per-layer-type tables a rope_parameters object may hold instead of flat parameters.
ROPE_TABLE_KINDS = ("sliding_attention", "full_attention")


def _rope_tables(config: Config) -> list[tuple[str, Any]]:
    """Return (where, table) of every rope parameter table: flat, or one per layer type."""
    key = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    params = config.get(key) or {}
    nested = [t for t in ROPE_TABLE_KINDS if t in params]
    return [(f"{key}.{t}", params[t]) for t in nested] if nested else [(key, params)]


def _relations(config: Config, spec: ArchitectureSpec) -> list[str]:
    """Return what is wrong between fields that are each within bounds."""
    problems = []
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    kv_heads = config.get("num_key_value_heads") or heads
    if kv_heads > heads or heads % kv_heads:
        problems.append(f"num_key_value_heads {kv_heads} must divide num_attention_heads {heads}")
    if not config.get("head_dim") and config["hidden_size"] % heads:
        problems.append(f"hidden_size {config['hidden_size']} must be a multiple of num_attention_heads {heads} "
                        "(or head_dim must be given)")
    layer_types = config.get("layer_types")
    if layer_types is not None and (len(layer_types) != layers or any(t not in spec.layer_types for t in layer_types)):
        problems.append(f"layer_types must list {layers} entries (num_hidden_layers), each one of "
                        f"{', '.join(spec.layer_types)} (the attention kinds {spec.name} has)")
    rope = full_rope_params(config)
    low, high = rope.get("low_freq_factor"), rope.get("high_freq_factor")
    if str(rope.get("rope_type", "")).lower() == "llama3" and low is not None and high is not None and high <= low:
        problems.append(f"the llama3 rope's high_freq_factor {high} must be above its low_freq_factor {low}")
    return problems


def check_config(config: Config, config_path: str, spec: ArchitectureSpec) -> None:
    """Raise BadInputError naming config.json and the field when a number is outside its sane bounds,
    or UnsupportedError when the architecture's runtime cannot take a valid layout."""

    def refuse(problem: str) -> BadInputError:
        return BadInputError(
            f"{config_path}: {problem}. No real model has this value, and converting it would crash or hang; fix "
            "config.json, or save it again with save_pretrained() from the model you trained."
        )

    for key, bound in CONFIG_BOUNDS.items():
        value = config.get(key)
        if value is None:
            if bound.required or key in spec.required_config:
                raise refuse(f"{key} is missing; it must be {bound.describe()}")
            continue
        problem = bound.problem(value)
        if problem:
            raise refuse(f"{key} is {value!r}; it {problem}")
    for label, table in _rope_tables(config):
        if not isinstance(table, dict):
            raise refuse(f"{label} is {table!r}; it must be a JSON object")
        for key, bound in ROPE_BOUNDS.items():
            value = table.get(key)
            problem = None if value is None else bound.problem(value)
            if problem:
                raise refuse(f"{label}.{key} is {value!r}; it {problem}")
    for problem in _relations(config, spec):
        raise refuse(problem)
    layer_types = config.get("layer_types")
    if spec.needs_sliding_layer and layer_types and "sliding_attention" not in layer_types:
        raise UnsupportedError(
            f"{config_path}: layer_types has no sliding_attention layer, and llama.cpp's {spec.name} runtime "
            "aborts on such a model (it needs at least one sliding-window layer). edgepack cannot convert it."
        )
