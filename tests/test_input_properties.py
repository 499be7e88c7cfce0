"""Property: whatever a checkpoint's safetensors header or config.json holds, edgepack ends cleanly.

Opening succeeds (exit 0) or raises bad input / unsupported (exit 2 / 3), never an internal error, a
hang or a crash. A build of such a checkpoint ends the same way, or with its gate failing (exit 1)
when an odd but legal value makes llama.cpp really disagree with transformers (found: Gemma's
query_pre_attn_scalar 1 gives KL 0.44); it leaves no partial output and no stray temporary file in
the stage cache, and its --json stdout is strict JSON. Examples are derandomized so the test is the
same in CI as here, and bounded (about 40 examples, well under a minute).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import edgepack, leftovers, strict_loads
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from packager.config_bounds import CONFIG_BOUNDS
from packager.errors import EdgepackError, ExitCode
from packager.pipeline import BuildRequest, open_input
from packager.progress import Reporter

CLEAN_REFUSALS = (ExitCode.BAD_INPUT, ExitCode.UNSUPPORTED)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
# Values near the edges most code forgets: zero, negatives, huge, fractional, NaN, strings of numbers.
edge_numbers = st.sampled_from([0, -1, 1, 3, 2**31, 2**63, 10**400, 10**6, -1e-6, 0.5, 1e308, float("nan"),
                                float("inf"), "64", True, None])
values = st.one_of(edge_numbers, st.integers(-(2**40), 2**40), json_values)
shapes = st.lists(st.integers(-(2**20), 2**20), max_size=3) | json_values

header_mutations = st.one_of(
    st.tuples(st.just("shape"), st.integers(0, 1000), shapes),
    st.tuples(st.just("dtype"), st.integers(0, 1000), st.sampled_from(["F32", "I8", "BF16", "F8_E4M3", "Q4"]) | values),
    st.tuples(st.just("data_offsets"), st.integers(0, 1000), st.lists(st.integers(-8, 2**20), max_size=3) | values),
    st.tuples(st.just("entry"), st.integers(0, 1000), values),
    st.tuples(st.just("delete"), st.integers(0, 1000), st.none()),
    st.tuples(st.just("__metadata__"), st.just(0), values),
)
config_keys = st.sampled_from([*CONFIG_BOUNDS, "model_type", "rope_parameters.rope_theta", "rope_parameters.factor",
                               "torch_dtype", "auto_map"])
config_mutations = st.tuples(st.just("config"), config_keys, values | st.just("<delete>"))


def _mutate_header(weights: Path, kind: str, index: int, value: Any) -> None:
    data = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    names = sorted(k for k in header if k != "__metadata__")
    name = names[index % len(names)]
    if kind == "__metadata__":
        header["__metadata__"] = value
    elif kind == "delete":
        del header[name]
    elif kind == "entry":
        header[name] = value
    else:
        header[name][kind] = value
    raw = json.dumps(header).encode()  # NaN and Infinity included, as a hostile file could hold them
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_len:])


def _mutate_config(config: Path, key: str, value: Any) -> None:
    cfg = json.loads(config.read_text())
    table, _, leaf = key.rpartition(".")
    target = cfg.setdefault(table, {}) if table else cfg
    if not isinstance(target, dict):
        return
    if value == "<delete>":
        target.pop(leaf, None)
    else:
        target[leaf] = value
    config.write_text(json.dumps(cfg))


def _apply(model: Path, mutation: tuple[str, Any, Any]) -> None:
    kind, where, value = mutation
    if kind == "config":
        _mutate_config(model / "config.json", where, value)
    else:
        _mutate_header(model / "model.safetensors", kind, where, value)


def _open_outcome(model: Path) -> int:
    """Exit code of opening the checkpoint and reading its contract, as the CLI would report it."""
    from packager.contract import contract_from_checkpoint

    try:
        ckpt, _ = open_input(BuildRequest(checkpoint=model, targets=[]), Reporter(quiet=True))
        contract_from_checkpoint(ckpt)
    except EdgepackError as exc:
        assert exc.exit_code in CLEAN_REFUSALS, f"{exc.label}: {exc.message}"
        assert str(model) in exc.message or "config.json" in exc.message, exc.message
        return int(exc.exit_code)
    return 0


@settings(max_examples=36, deadline=timedelta(seconds=10), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(gemma=st.booleans(), mutation=st.one_of(header_mutations, config_mutations))
def test_a_mutated_checkpoint_opens_or_is_refused_cleanly(tiny_llama: Path, tiny_gemma: Path, gemma: bool,
                                                          mutation: tuple[str, Any, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPACK_CACHE", str(Path(tmp) / "cache"))
        model = shutil.copytree(tiny_gemma if gemma else tiny_llama, Path(tmp) / "m")
        _apply(model, mutation)
        code = _open_outcome(model)
        event(f"open: exit {code}")
        assert code in (0, *CLEAN_REFUSALS)
        assert list((Path(tmp) / "cache").rglob("*.tmp")) == []


# Mutations that keep the checkpoint plausible enough to get past open, so the build stages run.
build_mutations = st.one_of(
    st.tuples(st.just("config"), st.sampled_from(["rms_norm_eps", "rope_parameters.rope_theta",
                                                  "final_logit_softcapping", "rope_local_base_freq"]),
              st.floats(1e-12, 1.0) | st.floats(1.0, 1e7)),
    st.tuples(st.just("config"), st.sampled_from(["max_position_embeddings", "num_key_value_heads", "eos_token_id",
                                                  "sliding_window", "query_pre_attn_scalar", "head_dim"]),
              st.integers(-2, 5000)),
    st.tuples(st.just("config"), st.just("layer_types"),
              st.lists(st.sampled_from(["sliding_attention", "full_attention"]), min_size=2, max_size=2)),
    header_mutations,
)


@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(gemma=st.booleans(), mutation=build_mutations)
def test_a_build_of_a_mutated_checkpoint_ends_cleanly(tiny_llama: Path, tiny_gemma: Path, gemma: bool,
                                                      mutation: tuple[str, Any, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        cache = Path(tmp) / "cache"
        mp.setenv("EDGEPACK_CACHE", str(cache))
        model = shutil.copytree(tiny_gemma if gemma else tiny_llama, Path(tmp) / "m")
        _apply(model, mutation)
        out = Path(tmp) / "dist" / "out"
        result = edgepack("build", model, "--target", "raspberry-pi", "--out", out, "--quant", "F16", "--json")
        event(f"build: exit {result.exit_code}")
        assert result.exit_code in (0, ExitCode.GATE_FAILED, *CLEAN_REFUSALS), result.stderr
        assert "Traceback" not in result.stderr
        payload = strict_loads(result.stdout)
        assert payload["passed"] is (result.exit_code == 0)
        if result.exit_code == ExitCode.GATE_FAILED:
            assert payload["error"] == "quality gate failed"
        if out.parent.exists():
            assert leftovers(out.parent, "out") == (["out"] if result.exit_code == 0 else [])
        assert list(cache.rglob("*.tmp")) == [] if cache.exists() else True
