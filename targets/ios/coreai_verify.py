"""Verifying an .aimodel in Apple's reference interpreter (coreai-core, on this host's CPU): level `simulated`.

coreai-core ships, for Linux, the reference interpreter of Core AI programs: the saved asset is loaded
(`AIModelAsset.load(path).executable()`), its `main` function called with the inputs and the state
arrays it updates in place. That is Apple's code evaluating the asset's own program, but not Core AI
on an iPhone: no Neural Engine, no GPU, no device compiler ran, so the level is `simulated`, as for
the Core ML package's numpy interpreter.

The asset is driven the way Apple's Core AI language-model engines drive it (CoreAISequentialEngine in
apple/coreai-models; see targets.ios.coreai_export): `input_ids` the new tokens, `position_ids` 0..total-1,
and the keyCache/valueCache states allocated at min(256, context) positions and doubled, their prefix
copied, whenever the context outgrows them (GrowingNDArrayState). The sequence of calls is the Core ML
package's (targets.ios.verify.PackageDriver): each golden sequence prefilled but for its last DECODE_STEPS
tokens, which are decoded one at a time through the state; logits compared with the fp32 reference on every
golden position (packager.verify.compare.golden_fidelity); a greedy continuation; and with an eval set, every
row answered under the contract (one prediction for the prompt, then one per token).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.verify.compare import first_difference, golden_fidelity
from packager.verify.reference import ReferenceLogits
from packager.verify.result import VerificationResult
from targets.ios import fp16_conversions
from targets.ios.coreai_export import COREAI_CORE_VERSION, INPUTS, OUTPUT, POSITIONS_AXIS, STATES
from targets.ios.verify import DECODE_STEPS, PackageDriver

RUNTIME = f"Apple's Core AI reference interpreter (coreai-core {COREAI_CORE_VERSION}, CPU, this host)"
# The positions Apple's engines first allocate a growing cache with (StateHandlerFactory.createSyncHandlers).
INITIAL_CACHE_POSITIONS = 256
WHERE = ("Apple's Core AI reference interpreter (coreai-core) on this build host's CPU; not an iPhone's Neural "
         "Engine or GPU, and not the Core AI runtime of iOS 27")


# Apple's interpreter computes fp16 matrix products at scalar speed (Gemma 3 270M all in fp16: about 9 s per token,
# 5 s with the F16C conversions of targets.ios.fp16_conversions; its golden text would take 45-75 min and its eval
# set 5-10 h), fp32 ones vectorized (the default `mixed` precision: about 2 s per prediction + 0.02 s per token, the
# golden text in 2.5 min):
# a build gives it this many minutes (--coreai-check-minutes).
CHECK_MINUTES = 30.0
# Tokens of the longer of the two timed predictions the budget is measured from.
PROBE_TOKENS = 4


@dataclass(frozen=True)
class CheckBudget:
    """How much Apple's interpreter can be asked within a build's minutes for it. A prediction costs a fixed part
    (Gemma 3 270M: about 2 s, the weights cast and the arrays set up in every call) and a part per token (0.03 s
    with fp32 matrix products, 4.85 s with fp16 ones), both read from two timed predictions (1 and PROBE_TOKENS
    tokens) after an untimed one. With an eval set, half the seconds go to the golden text (with the greedy
    continuation) and half to the eval rows, or the whole of them to each when the rows are answered `apart`, in a
    second interpreter process on another core (targets.ios.coreai_eval)."""

    minutes: float
    seconds_per_call: float
    seconds_per_token: float
    golden_seconds: float
    eval_seconds: float
    apart: bool = False

    @classmethod
    def measured(cls, driver: PackageDriver, ids: list[int], minutes: float, with_eval: bool,
                 apart: bool = False) -> CheckBudget:
        probe = ids[:PROBE_TOKENS]

        def timed(n: int) -> float:
            driver.reset_state()
            start = time.perf_counter()
            driver.predict(driver.step_inputs(probe[:n], n))
            return time.perf_counter() - start

        timed(1)  # the first prediction after loading is slower (measured: 2.3 s, then 2.0 s): not a sample
        one, many = timed(1), timed(len(probe))
        driver.reset_state()
        per_token = max(0.0, (many - one) / max(1, len(probe) - 1))
        per_call = max(0.0, one - per_token)
        seconds = minutes * 60
        if not with_eval:
            return cls(minutes, per_call, per_token, seconds, 0.0)
        if apart:
            return cls(minutes, per_call, per_token, seconds, seconds, apart=True)
        return cls(minutes, per_call, per_token, seconds / 2, seconds / 2)

    def cost(self, calls: int, tokens: int) -> float:
        """Seconds the interpreter is expected to take for `calls` predictions of `tokens` tokens in all."""
        return calls * self.seconds_per_call + tokens * self.seconds_per_token

    def positions_per_sequence(self, lengths: list[int], greedy_tokens: int) -> int | None:
        """The positions each golden sequence is cut to so that they and the greedy continuation fit (None: all
        fit); never fewer than the decoded tail plus one prefilled position. Each sequence is one prefill and
        up to DECODE_STEPS one-token calls; the greedy continuation one call per token."""
        calls = sum(1 + min(DECODE_STEPS, max(0, n - 1)) for n in lengths) + greedy_tokens
        if self.cost(calls, sum(lengths) + greedy_tokens) <= self.golden_seconds:
            return None
        fixed = self.cost(len(lengths) * (1 + DECODE_STEPS) + greedy_tokens, greedy_tokens)
        room = max(0.0, self.golden_seconds - fixed) / max(self.seconds_per_token, 1e-9)
        return max(DECODE_STEPS + 1, int(min(room, sum(lengths))) // len(lengths))

    def rows(self, row_costs: list[tuple[int, int]]) -> int:
        """How many eval rows, from the first, fit in the eval share (row_costs: each row's calls and tokens)."""
        used = 0.0
        fitted = 0
        for calls, tokens in row_costs:
            used += self.cost(calls, tokens)
            if used > self.eval_seconds:
                break
            fitted += 1
        return fitted

    def describe(self) -> str:
        split = ("golden text and eval rows each in their own interpreter process" if self.apart
                 else "shared by the golden text and the eval rows" if self.eval_seconds else "")
        return (f"a {self.minutes:g}-minute budget for Apple's interpreter ({self.seconds_per_call:.2f} s per call "
                f"+ {self.seconds_per_token:.3f} s per token measured here{'; ' + split if split else ''}; raise it "
                "with --coreai-check-minutes)")


class AimodelDriver(PackageDriver):
    """An .aimodel's `main` function in coreai-core's interpreter, driven as Apple's engines drive it, with its
    state carried between calls and grown as theirs is."""

    level = "simulated"
    runs_on = WHERE
    # The Swift Core AI path generates through a LanguageModelSession, which takes no token choice from us.
    chooses_labels = False
    # Seconds per token: the eval prompts' shared prefix is prefilled once (PackageDriver.hold_prefix).
    reuses_prefix = True
    # Each call costs the interpreter about 2 s beyond its tokens (Gemma 3 270M): fp32's answer goes in with the
    # prompt as a draft, checked (PackageDriver.continuation). Positions a rejected draft wrote are not read: the
    # program attends over 0..len(position_ids)-1 and writes the next call's tokens over them.
    checks_drafts = True
    unconstrained = "CoreAIModel (Swift) generates through a LanguageModelSession with no grammar"

    def __init__(self, asset_path: Path) -> None:
        # Before the interpreter module loads: its fp16 conversions are bound when it does.
        self.fast_conversions = fp16_conversions.active()
        from coreai.authoring.asset import AIModelAsset

        self.asset = AIModelAsset.load(asset_path)
        self.metadata: dict[str, Any] = dict(self.asset.metadata.creator_defined_metadata)
        self.window = int(self.metadata.get("edgepack.sliding_window") or 0) or None
        self.max_context = int(self.metadata["edgepack.max_context"])
        self._loop = asyncio.new_event_loop()
        self._executable = self.asset.executable()
        model = self._loop.run_until_complete(self._executable.__aenter__())
        self.function = model.load_function("main")
        desc = self.function.desc
        self.interface: dict[str, Any] = {
            "inputs": {n: [list(desc.input_descriptor(n).shape), desc.input_descriptor(n).dtype]
                       for n in desc.input_names},
            "outputs": {n: [list(desc.output_descriptor(n).shape), desc.output_descriptor(n).dtype]
                        for n in desc.output_names},
            "states": {n: [list(desc.state_descriptor(n).shape), desc.state_descriptor(n).dtype]
                       for n in desc.state_names},
        }
        self.state: dict[str, Any] = {}

    def close(self) -> None:
        """Release the loaded model (the interpreter holds its weights)."""
        self._loop.run_until_complete(self._executable.__aexit__(None, None, None))
        self._loop.close()

    def reset_state(self) -> None:
        """Fresh zero states of min(256, context) positions, as Apple's engines first allocate them."""
        self.state = {name: self._zeros(name, min(INITIAL_CACHE_POSITIONS, self.max_context))
                      for name in self.interface["states"]}

    def copy_state(self) -> dict[str, np.ndarray]:
        return {name: np.array(array.numpy()) for name, array in self.state.items()}

    def restore_state(self, copy: object) -> None:
        from coreai.runtime import NDArray

        assert isinstance(copy, dict)
        self.state = {name: NDArray(np.array(array)) for name, array in copy.items()}

    def _zeros(self, name: str, positions: int) -> Any:
        from coreai.runtime import NDArray

        shape, dtype = self.interface["states"][name]
        shape = [positions if axis == POSITIONS_AXIS else size for axis, size in enumerate(shape)]
        return NDArray(np.zeros(shape, dtype=np.dtype(dtype)))

    def _make_room(self, total: int) -> None:
        """Double the states' positions (keeping what they hold) until `total` fit, up to the context."""
        from coreai.runtime import NDArray

        if total > self.max_context:
            raise ValueError(f"{total} positions asked of an .aimodel made for a context of {self.max_context}")
        held = int(next(iter(self.state.values())).numpy().shape[POSITIONS_AXIS])
        grown = held
        while grown < total:
            grown = min(grown * 2, self.max_context)
        if grown == held:
            return
        prefix = (slice(None),) * POSITIONS_AXIS + (slice(0, held),)
        for name, array in self.state.items():
            larger = np.asarray(self._zeros(name, grown).numpy())
            larger[prefix] = np.asarray(array.numpy())
            self.state[name] = NDArray(larger)

    def step_inputs(self, ids: list[int], total: int) -> dict[str, np.ndarray]:
        """Apple's engine inputs: the new ids, and the positions of the whole context so far (0..total-1)."""
        self._make_room(total)
        return {INPUTS[0]: np.asarray([ids], dtype=np.int32),
                INPUTS[1]: np.arange(total, dtype=np.int32)[np.newaxis]}

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
        from coreai.runtime import NDArray

        arrays = {name: NDArray(np.ascontiguousarray(value)) for name, value in inputs.items()
                  if name in self.interface["inputs"]}
        out = self._loop.run_until_complete(self.function(inputs=arrays, state=self.state))
        return np.asarray(out[OUTPUT].numpy())


def matmul_arithmetic(asset: Any) -> dict[str, int]:
    """How many of a loaded asset's (AIModelAsset) matrix products compute in each element type ({"f32": 163}),
    read from its own IR, so the report says what the program does rather than what its conversion asked for.

    coreai-core 1.0.0b3 exposes the loaded IR module only through private attributes (pinned version)."""
    from coreai._compiler.ir import WalkResult

    counts: dict[str, int] = {}

    def visit(op: Any) -> Any:
        if op.name.endswith("batch_matmul"):
            element = re.search(r"[<x]([a-z]+\d+)>$", str(op.results[0].type))
            key = element.group(1) if element else str(op.results[0].type)
            counts[key] = counts.get(key, 0) + 1
        return WalkResult.ADVANCE

    asset.program._module._mlir_module.operation.walk(visit)
    return counts


def check_interface(interface: dict[str, Any]) -> list[str]:
    """What Apple's engines rely on: two int32 inputs input_ids, position_ids in that order (they are read by
    position), fp16 logits first, and the keyCache/valueCache states in fp16 whose positions axis can grow."""
    failures = []
    inputs = list(interface["inputs"])
    if inputs != list(INPUTS):
        failures.append(f"inputs are {inputs}, Apple's engines drive {list(INPUTS)} (in that order)")
    for name, (_, dtype) in interface["inputs"].items():
        if dtype != "int32":
            failures.append(f"input {name} is {dtype}, not int32")
    outputs = list(interface["outputs"])
    if outputs[:1] != [OUTPUT] or interface["outputs"][outputs[0]][1] != "float16":
        failures.append(f"outputs are {interface['outputs']}, expected float16 {OUTPUT} first")
    if sorted(interface["states"]) != sorted(STATES):
        failures.append(f"states are {sorted(interface['states'])}, expected {list(STATES)}")
    for name, (shape, dtype) in interface["states"].items():
        if dtype != "float16":
            failures.append(f"state {name} is {dtype}, not float16")
        if len(shape) != 5 or shape[POSITIONS_AXIS] != -1:
            failures.append(f"state {name} has shape {shape}, not [layers, 1, kv_heads, positions, head_dim] with "
                            "a positions axis the engine can grow (-1)")
    return failures


def verify_aimodel(driver: AimodelDriver, artifact: str, quant: str, gate: Any, reference: ReferenceLogits,
                   eos_ids: list[int], hf_tokenizer: Any, max_context: int,
                   budget: CheckBudget | None = None) -> VerificationResult:
    """Interface check + golden-position logits and a greedy continuation through the interpreter, vs fp32; with
    a `budget`, each golden sequence is cut to the positions it leaves room for, and the report says so."""
    failures = check_interface(driver.interface)
    n_greedy = len(reference.greedy_ids) or 24
    lengths = [min(len(s), max_context) for s in reference.sequences]
    cut = budget.positions_per_sequence(lengths, len(reference.greedy_prompt_ids) + n_greedy) if budget else None
    start = time.perf_counter()
    acc, truncated = golden_fidelity(reference, driver.logits, max_context if cut is None else min(cut, max_context))
    seconds = time.perf_counter() - start
    metrics = acc.result()
    greedy_ids = driver.greedy(reference.greedy_prompt_ids, n_greedy, eos_ids)
    if driver.nonfinite_steps:
        failures.append(f"non-finite logits: {driver.nonfinite_steps} prediction(s) of the interpreter gave NaN or "
                        "infinite values")
    failures += gate.check(metrics)
    notes = [f"simulated: the .aimodel's program run by {WHERE}, driven as Apple's Core AI language-model engines "
             f"drive it (input_ids, position_ids); each golden sequence prefilled, then its last {DECODE_STEPS} "
             f"tokens decoded one by one through the keyCache/valueCache state ({seconds:.1f} s)",
             f"logit cosine vs fp32 transformers: {metrics.cosine:.4f}"]
    arithmetic = ", ".join(f"{n} in {kind}" for kind, n in sorted(matmul_arithmetic(driver.asset).items()))
    notes.append(f"the program's matrix products (read from its IR): {arithmetic or 'none found'}")
    if driver.fast_conversions:
        notes.append("the interpreter's fp16 <-> fp32 conversions ran on the CPU's F16C instructions in place of "
                     "libswiftCore's software ones (same results bit for bit; targets.ios.fp16_conversions)")
    beyond_context = sum(len(s) for s in reference.sequences) - sum(lengths)
    if beyond_context:
        notes.append(f"{beyond_context} golden positions beyond the {max_context}-position context were not compared")
    if budget is not None and cut is not None:
        notes.append(f"only the first {cut} positions of each golden sequence were compared "
                     f"({sum(lengths) - (truncated - beyond_context)} of {sum(lengths)}), to fit {budget.describe()}")
    if greedy_ids != reference.greedy_ids:
        same = first_difference(greedy_ids, reference.greedy_ids)
        notes.append(f"greedy ids agree with the reference for the first "
                     f"{same if same is not None else min(len(greedy_ids), len(reference.greedy_ids))} of "
                     f"{len(reference.greedy_ids)} tokens")
    states = ", ".join(f"{n} {shape}" for n, (shape, _) in driver.interface["states"].items())
    return VerificationResult(
        artifact=artifact, format="aimodel", quant=quant, level="simulated",
        runtime=f"{RUNTIME}; {', '.join(driver.interface['inputs'])} -> logits, states {states}",
        metrics=metrics, greedy_match=greedy_ids == reference.greedy_ids,
        greedy_text_reference=hf_tokenizer.decode(reference.greedy_ids) if hf_tokenizer is not None else "",
        greedy_text=hf_tokenizer.decode(greedy_ids) if hf_tokenizer is not None else "",
        gate=gate.describe(), failures=failures, notes=notes)
