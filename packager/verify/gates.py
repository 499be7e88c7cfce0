"""Quality gates: how faithful each kind of artifact must be to the fp32 reference.

Calibrated on what llama.cpp's own converter + quantizer reach on Gemma 3 270M over the bundled
golden text (about 500 positions, measured 2026-11-21, see docs/benchmarks.md):

    type     top-1   top-1 (decisive)   KL
    F16      0.998   1.000              0.00002
    Q8_0     0.971   0.996              0.0031
    Q6_K     0.943   0.972              0.0086
    Q5_K_M   0.884   0.923              0.034
    Q4_K_M   0.941   0.976              0.0062
    Q4_0     0.640   0.663              0.50     <- must fail

Raw top-1 flips at near-ties (the reference's top two logits within 0.1), so the gate reads
top-1 on decisive positions together with the mean KL divergence, which has no ties.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from packager.verify.metrics import FidelityMetrics
from packager.verify.task_eval import TaskMetrics


def _outside(label: str, value: float, bound: float, *, at_least: bool, digits: int) -> str | None:
    """Return why value breaks `value >= bound` (at_least) or `value <= bound`, else None.

    Written as "fail unless finite and within bound": a NaN compares False with everything, so a gate
    written as `if value > bound: fail` would pass it.
    """
    if not math.isfinite(value):
        return f"{label} is {value} (not a finite number)"
    within = value >= bound if at_least else value <= bound
    return None if within else f"{label} {value:.{digits}f} {'<' if at_least else '>'} {bound:.{digits}f}"


def non_finite_logits(m: FidelityMetrics) -> list[str]:
    """Return the failure for an artifact whose logits hold NaN or infinity anywhere (empty when none do)."""
    if not m.nonfinite_positions:
        return []
    return [f"non-finite logits: NaN or infinity at {m.nonfinite_positions} of {m.positions} positions (the "
            "conversion or the runtime produced numbers that are not numbers)"]


@dataclass(frozen=True)
class Gate:
    """Minimum decisive top-1 agreement and maximum mean KL divergence for one artifact class."""

    name: str
    min_top1_decisive: float
    max_kl: float

    def check(self, m: FidelityMetrics) -> list[str]:
        """Return the reasons this artifact fails (empty when it passes)."""
        reasons = non_finite_logits(m)
        if m.top1_decisive is not None:
            reasons.append(_outside("top-1 (decisive)", m.top1_decisive, self.min_top1_decisive, at_least=True,
                                    digits=3))
        reasons.append(_outside("KL", m.kl, self.max_kl, at_least=False, digits=4))
        return [r for r in reasons if r]

    def describe(self) -> str:
        return f"{self.name}: top-1 (decisive) >= {self.min_top1_decisive}, KL <= {self.max_kl}"


@dataclass(frozen=True)
class TopOneGate:
    """Minimum raw top-1 agreement, for a target that states its gates this way (e.g. fp16 >= 0.98; a
    compressed artifact at most 0.02 below llama.cpp's Q4_K_M of the same model on the same positions).

    `also`: a class gate that must hold as well, so a weak baseline (a Q4_K_M that lost the fine-tune)
    cannot lower the bar below what every other artifact of that bit width meets.
    """

    name: str
    min_top1: float
    also: Gate | None = None

    def check(self, m: FidelityMetrics) -> list[str]:
        reasons = [] if self.also else non_finite_logits(m)  # with a class gate, that gate reports them
        reasons.append(_outside("top-1", m.top1, self.min_top1 - 1e-12, at_least=True, digits=3))
        return [r for r in reasons if r] + (self.also.check(m) if self.also else [])

    def describe(self) -> str:
        return f"{self.name}: top-1 >= {self.min_top1:.3f}" + (f"; and {self.also.describe()}" if self.also else "")


LOSSLESS = Gate("16/32-bit", min_top1_decisive=0.99, max_kl=0.002)
EIGHT_BIT = Gate("8-bit", min_top1_decisive=0.95, max_kl=0.015)
LOW_BIT = Gate("3-6-bit", min_top1_decisive=0.90, max_kl=0.06)

GATE_BY_TYPE: dict[str, Gate] = {
    "F32": LOSSLESS, "F16": LOSSLESS, "BF16": LOSSLESS,
    "Q8_0": EIGHT_BIT,
    "Q6_K": LOW_BIT, "Q5_K_M": LOW_BIT, "Q5_K_S": LOW_BIT, "Q5_0": LOW_BIT, "Q5_1": LOW_BIT,
    "Q4_K_M": LOW_BIT, "Q4_K_S": LOW_BIT, "Q4_0": LOW_BIT, "Q4_1": LOW_BIT, "Q3_K_M": LOW_BIT,
}


def gate_for(quant: str) -> Gate:
    return GATE_BY_TYPE.get(quant, LOW_BIT)


@dataclass(frozen=True)
class TaskGate:
    """The user's task, not just the logits: accuracy may drop at most this much vs the fp32 model."""

    max_accuracy_drop: float = 0.02
    min_validity: float = 1.0
    # With an eval set the task is the acceptance test: a fidelity miss with the task intact is a warning.
    # False under --strict-fidelity (and without an eval set, where fidelity is all there is).
    decides: bool = False

    def check(self, t: TaskMetrics) -> list[str]:
        reasons = []
        drop = None if t.baseline_exact_match is None else t.baseline_exact_match - t.exact_match
        if drop is not None and not drop <= self.max_accuracy_drop + 1e-9:
            reasons.append(
                f"accuracy {t.exact_match:.3f} is {100 * drop:.1f} points below "
                f"fp32's {t.baseline_exact_match:.3f} (allowed {100 * self.max_accuracy_drop:.1f})"
            )
        if not t.validity >= self.min_validity:
            reasons.append(f"contract validity {t.validity:.3f} < {self.min_validity:.3f}")
        return reasons

    def describe(self) -> str:
        rule = " (decides; fidelity misses are warnings)" if self.decides else ""
        return (f"task: accuracy drop <= {100 * self.max_accuracy_drop:.1f} points, validity >= "
                f"{self.min_validity:.2f}{rule}")


def gate_as_dict(gate: Gate | TopOneGate) -> dict[str, object]:
    """A fidelity gate as JSON data, for a verification that runs in a child process."""
    return asdict(gate)


def gate_from_dict(data: dict[str, object]) -> Gate | TopOneGate:
    """The gate `gate_as_dict` wrote: a TopOneGate has `min_top1` (and maybe a class gate `also`)."""
    fields = dict(data)
    if "min_top1" not in fields:
        return Gate(**fields)  # type: ignore[arg-type]
    also = fields.pop("also", None)
    return TopOneGate(**fields, also=Gate(**also) if isinstance(also, dict) else None)  # type: ignore[arg-type]
