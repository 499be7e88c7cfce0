"""Device profiles and peak-RAM estimates: what fits where, before anything is built.

RAM budgets are deliberately conservative: the share of physical memory an app or service can
count on next to the OS and other apps (phones kill apps well before memory is full). Estimates
are weights + KV cache at the chosen context (sliding-window aware) + a runtime overhead; they
are estimates, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packager.architectures import ArchitectureSpec
from packager.errors import BadInputError


@dataclass(frozen=True)
class DeviceProfile:
    """One device class: memory a model may use, the target that serves it, and the runtime.

    Declared by that target (its class attribute `devices`), so a plugin brings its own devices.
    """

    name: str
    title: str
    ram_gb: float
    budget_fraction: float
    target: str
    runtime: str
    notes: str = ""

    @property
    def budget_mb(self) -> float:
        return self.ram_gb * 1024 * self.budget_fraction


# Average bits per weight of each GGUF type on the matrices it quantizes (llama.cpp's own figures).
BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5, "Q3_K_M": 3.91,
}
# Ordered from most to least faithful: `build --device` walks this list and takes the first that fits.
QUANT_PREFERENCE = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")
RUNTIME_OVERHEAD_MB = 150.0


def installed_devices() -> list[DeviceProfile]:
    """Return the device profiles every installed target declares (class attribute `devices`)."""
    from packager.target import available_targets

    return [profile for cls in available_targets().values() for profile in getattr(cls, "devices", ())]


def device(name: str) -> DeviceProfile:
    """Return the installed device profile called `name`, or raise a BadInputError listing the known ones."""
    profiles = installed_devices()
    for d in profiles:
        if d.name == name:
            return d
    raise BadInputError(f"--device {name}: unknown device. Known: {', '.join(d.name for d in profiles)}.")


def weights_mb(parameters: int, quant: str) -> float:
    return parameters * BITS_PER_WEIGHT[quant] / 8 / 2**20


def kv_cache_mb(config: dict[str, Any], context: int) -> float:
    """fp16 K and V for every layer; sliding-window layers only keep their window."""
    layers = int(config["num_hidden_layers"])
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    window = config.get("sliding_window")
    types = config.get("layer_types") or ["full_attention"] * layers
    total_positions = sum(min(context, window) if (t == "sliding_attention" and window) else context for t in types)
    return 2 * kv_heads * head_dim * 2 * total_positions / 2**20


def logits_mb(config: dict[str, Any]) -> float:
    """One row of float32 logits per decoding step (large for 262k-vocabulary models)."""
    return int(config["vocab_size"]) * 4 / 2**20 * 2


@dataclass
class RamEstimate:
    quant: str
    context: int
    weights_mb: float
    kv_mb: float
    overhead_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_mb + self.overhead_mb


def estimate(parameters: int, config: dict[str, Any], quant: str, context: int) -> RamEstimate:
    """Peak RAM of running this model as a GGUF of type `quant` at `context`."""
    return estimate_artifact(DeviceArtifact(quant, weights_mb(parameters, quant), quant=quant), config, context)


# Bits one tensor (by name and shape) costs in an artifact: how a target prices its own format.
BitsPerTensor = Callable[[str, tuple[int, ...]], float]


@dataclass(frozen=True)
class DeviceArtifact:
    """One artifact a target can ship to a device: how a build asks for it, and its estimated weights.

    `quant` is the GGUF type to build (GGUF targets); `option` is the target option (name, value)
    that selects it (e.g. ("compression", "int8") for Core ML). Targets list theirs most faithful
    first; `build --device` ships the first whose estimate fits the device's budget.
    """

    label: str
    weights_mb: float
    quant: str | None = None
    option: tuple[str, Any] | None = None


def tensor_weights_mb(shapes: Mapping[str, Sequence[int]], bits: BitsPerTensor) -> float:
    """Return the weight megabytes of a checkpoint's tensors when each costs `bits(name, shape)` per value."""
    return sum(math.prod(shape) * bits(name, tuple(shape)) for name, shape in shapes.items()) / 8 / 2**20


def option_artifacts(ckpt: Any, runtime: str, option: str,
                     pricing: Mapping[str, BitsPerTensor]) -> list[DeviceArtifact]:
    """Return one artifact per value of target option `option` (in `pricing`'s order), each priced per tensor."""
    shapes = {name: entry.shape for name, entry in ckpt.tensors.items()}
    return [DeviceArtifact(f"{runtime} {value}", tensor_weights_mb(shapes, bits), option=(option, value))
            for value, bits in pricing.items()]


def gguf_artifacts(parameters: int) -> list[DeviceArtifact]:
    """The GGUF types a GGUF target can ship, most faithful first."""
    return [DeviceArtifact(quant, weights_mb(parameters, quant), quant=quant) for quant in QUANT_PREFERENCE]


def estimate_artifact(artifact: DeviceArtifact, config: dict[str, Any], context: int) -> RamEstimate:
    """Peak RAM of running `artifact`: its weights + the KV cache at `context` + the runtime's overhead."""
    return RamEstimate(artifact.label, context, artifact.weights_mb, kv_cache_mb(config, context),
                       RUNTIME_OVERHEAD_MB + logits_mb(config))


def first_fitting(profile: DeviceProfile, artifacts: Sequence[DeviceArtifact], config: dict[str, Any],
                  context: int) -> tuple[DeviceArtifact, RamEstimate] | None:
    """The most faithful artifact whose estimated peak RAM fits the device's budget, with its estimate."""
    for artifact in artifacts:
        est = estimate_artifact(artifact, config, context)
        if est.total_mb <= profile.budget_mb:
            return artifact, est
    return None


def best_quant_for(profile: DeviceProfile, parameters: int, config: dict[str, Any], context: int) -> str | None:
    """The most faithful GGUF type whose estimated peak RAM fits the device budget, or None."""
    fitting = first_fitting(profile, gguf_artifacts(parameters), config, context)
    return fitting[0].quant if fitting else None


def fp16_note(spec: ArchitectureSpec) -> str:
    return spec.fp16_risk or "no known fp16 overflow"



def artifacts_for(target: Any, ckpt: Any) -> list[DeviceArtifact]:
    """Return what `target` can ship for this checkpoint, most faithful first: its own `device_artifacts(ckpt)`
    when it declares one, else the GGUF ladder when it ships a GGUF, else nothing."""
    declared = getattr(target, "device_artifacts", None)
    if declared is not None:
        return list(declared(ckpt))
    return gguf_artifacts(ckpt.parameter_count) if getattr(target, "default_quant", None) else []
