"""Verifying a .mlpackage: its spec (structural) and its MIL program in numpy (`simulated`).

The spec check reads what swift-transformers and Core ML read: input/output/state names, types and
ranges, the ML Program's specification version (iOS 18 = 9) and the metadata keys. It cannot see a
numerical problem; the simulation can: the saved program runs op by op in fp16
(targets.ios.mil_interpreter), fed the same fp16 masks swift-transformers builds, prefilling
each golden sequence except its last DECODE_STEPS tokens and then decoding those one at a time
through the carried keyCache/valueCache state. Its logits are compared with the fp32 reference of
transformers on every golden position, and a greedy continuation with the reference's. With an eval
set, the same program answers every row under the task contract the way the Swift bridge drives it
(EdgeModel.generate: the prompt in one prediction, then one token per prediction).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.contract import Contract, render_prompt
from packager.label_choice import LabelChoice
from packager.verify.child_verify import Verified, VerifyInputs, serve_verification
from packager.verify.gates import gate_from_dict
from packager.verify.metrics import FidelityAccumulator
from packager.verify.reference import ReferenceLogits
from packager.verify.result import VerificationResult
from packager.verify.task_eval import EvalRow, Generator, TaskMetrics, prompt_ids, score, token_generator

if TYPE_CHECKING:
    from packager.adapter import AdapterSource

FP16_MAX = 65504.0
DECODE_STEPS = 8
# A draft token is taken from the prediction that checks the whole draft only when the program's choice there
# beats its runner-up by this much (logits, fp16: 6 steps at 16-32): that prediction and the bridge's one-token
# predictions sum in different orders, which can flip a closer call.
DRAFT_MARGIN = 0.1
# iOS 18 / macOS 15 ML Programs have specification version 9 and the MIL opset CoreML8.
IOS18_SPEC_VERSION = 9
IOS18_OPSET = "CoreML8"


def _margin(logits: np.ndarray) -> float:
    """How far the greedy choice is ahead of the runner-up."""
    top2 = np.partition(logits, -2)[-2:]
    return float(top2[1] - top2[0])


def additive_masks(seq: int, total: int, window: int | None) -> dict[str, np.ndarray]:
    """The fp16 masks swift-transformers' additiveAttentionMask builds: 0 where allowed, -65504 elsewhere."""
    q = np.arange(total - seq, total)[:, None]
    k = np.arange(total)[None, :]
    causal = k <= q
    masks = {"fullAttentionMask": np.where(causal, 0.0, -FP16_MAX).astype(np.float16).reshape(1, 1, seq, total)}
    if window is not None:
        inside = causal & (k > q - window)
        masks["slidingAttentionMask"] = np.where(inside, 0.0, -FP16_MAX).astype(np.float16).reshape(
            1, 1, seq, total)
    return masks


class PackageDriver:
    """Drives a stateful package the way swift-transformers does; subclasses say what runs the program."""

    spec: Any
    window: int | None
    level: str
    # What ran the program, as the report's latency note says it.
    runs_on: str = "this build host's CPU"
    nonfinite_steps: int = 0
    first_nonfinite: str | None = None
    # Whether continuation() may check a draft in one prediction: a program whose masks say which positions
    # are read (a draft's rejected positions are then stale, never read). Not a driver timing a real runtime.
    checks_drafts: bool = False
    # Whether the bridge running this program holds a constrained labels contract to its labels itself (Core ML:
    # EdgeModel, LabelChoice.swift), so that continuation() is given the same choice.
    chooses_labels: bool = True
    # Why a constrained contract is decoded unconstrained here, for the report.
    unconstrained: str = "EdgeModel (Swift) has no grammar for a JSON schema"
    # Answer tokens continuation() gave, and how many of them it took from a draft's prediction (the report's).
    answered: int = 0
    drafted: int = 0
    # Whether answer_eval_set may prefill the prompts' shared prefix once and start every row from a copy of that
    # state (a prefix cache): for a program too slow to prefill it per row, whose latency is no app's anyway.
    reuses_prefix: bool = False
    held_prefix: tuple[int, ...] = ()
    _held_state: object = None

    def _read_window(self) -> None:
        meta = dict(self.spec.description.metadata.userDefined)
        window = meta.get("co.huggingface.exporters.sliding_window")
        self.window = int(window) if window else None

    def reset_state(self) -> None:
        raise NotImplementedError

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
        """The program's logits for `inputs`; a driver may give only the last `last_positions` rows."""
        raise NotImplementedError

    def copy_state(self) -> object:
        """A copy of the state, for restore_state (drivers that reuse a prefix)."""
        raise NotImplementedError

    def restore_state(self, copy: object) -> None:
        raise NotImplementedError

    def hold_prefix(self, prefix: Sequence[int]) -> None:
        """Prefill `prefix` once and keep the state it leaves: fresh_state starts prompts that begin with it there."""
        self.reset_state()
        if prefix:
            self.step(list(prefix), len(prefix), last_only=True)
        self.held_prefix, self._held_state = tuple(prefix), self.copy_state() if prefix else None

    def fresh_state(self, prompt_ids: Sequence[int]) -> int:
        """The state a prompt starts from: the held prefix's when the prompt begins with it (and goes beyond it),
        else an empty one. Returns how many of the prompt's ids the state already holds."""
        held = len(self.held_prefix)
        if held and len(prompt_ids) > held and tuple(prompt_ids[:held]) == self.held_prefix:
            self.restore_state(self._held_state)
            return held
        self.reset_state()
        return 0

    def step_inputs(self, ids: list[int], total: int) -> dict[str, np.ndarray]:
        """The inputs of one prediction of `ids`, the last of `total` tokens: swift-transformers' names."""
        return {"inputIds": np.asarray([ids], dtype=np.int32), **additive_masks(len(ids), total, self.window)}

    def step(self, ids: list[int], total: int, last_only: bool = False, last_rows: int | None = None) -> np.ndarray:
        """Logits [len(ids), vocab] of one prediction of `ids`, the last of `total` tokens, through the state
        (with `last_only`, at least the last row; with `last_rows`, at least that many last rows)."""
        logits = np.asarray(self.predict(self.step_inputs(ids, total), 1 if last_only else last_rows)[0],
                            dtype=np.float32)
        if not np.isfinite(logits).all():
            self.nonfinite_steps += 1
        return logits

    def logits(self, ids: list[int], decode_steps: int = DECODE_STEPS) -> np.ndarray:
        """Logits at every position: a prefill of all but the last `decode_steps` ids, then one id per call."""
        self.reset_state()
        split = max(1, len(ids) - decode_steps)
        parts = [self.step(ids[:split], split)]
        for t in range(split, len(ids)):
            parts.append(self.step([ids[t]], t + 1))
        return np.concatenate(parts)

    def continuation(self, prompt_ids: list[int], max_context: int, draft: Sequence[int] = (),
                     choice: LabelChoice | None = None) -> Iterator[int]:
        """Greedy tokens after prompt_ids, each asked for when taken, the way EdgeModel.generate drives the
        package: a fresh state, the whole prompt in one prediction, then one token per prediction, and no more
        tokens once the context is full (no token at all for a prompt that fills it: the bridge refuses it).

        With a `draft` (the tokens the answer likely starts with: fp32's answer) and a driver that `checks_drafts`,
        the prompt and the draft go in one prediction instead, and each draft token the program itself picks
        there is taken without a prediction of its own (speculative decoding, with the draft checked rather than
        trusted): the first token it does not pick is its own pick there, and decoding goes on one token per
        prediction from there. A call closer than DRAFT_MARGIN is re-decided as the bridge decides it.

        With a `choice` (a constrained labels contract), each token is the best one that keeps the answer on a
        label's token path, as EdgeModel does (LabelChoice.swift), instead of the argmax.
        """
        def pick(logits: np.ndarray) -> tuple[int, float]:
            return choice.ranked(logits, answer) if choice else (int(np.argmax(logits)), _margin(logits))

        answer: list[int] = []
        total = len(prompt_ids)
        held = self.fresh_state(prompt_ids)
        if total >= max_context:
            return
        draft = list(draft)[:max_context - total - 1] if self.checks_drafts else []
        checked = self.step(prompt_ids[held:] + draft, total + len(draft), last_rows=len(draft) + 1)[-len(draft) - 1:]
        ids = prompt_ids + draft
        for i, logits in enumerate(checked):
            # Re-deciding the first token predicts the prompt alone again: the draft's positions are then gone.
            restarted = False
            tok, margin = pick(logits)
            if draft and margin < DRAFT_MARGIN:
                logits, restarted = self._as_the_bridge(prompt_ids, ids[total + i - 1], total + i), i == 0
                tok, _ = pick(logits)
            self.drafted += i < len(draft) and tok == draft[i]
            self.answered += 1
            answer.append(tok)
            yield tok
            if total + i + 1 >= max_context:
                return
            if i == len(draft) or tok != draft[i] or restarted:
                break
        total += i + 1  # the prompt and the answer so far
        last = self.step([tok], total)[-1]
        while True:
            tok, _ = pick(last)
            self.answered += 1
            answer.append(tok)
            yield tok
            total += 1  # the prompt and the answer so far
            if total >= max_context:
                return
            last = self.step([tok], total)[-1]

    def _as_the_bridge(self, prompt_ids: list[int], token: int, total: int) -> np.ndarray:
        """The logits after `token`, the last of `total`, from the prediction EdgeModel.generate makes for it: the
        prompt's own (a fresh state), else one token's over the state so far (positions past `total`, written
        by the draft's prediction, are not read: the masks cover 0..total-1)."""
        if total == len(prompt_ids):
            held = self.fresh_state(prompt_ids)
            return self.step(prompt_ids[held:], total, last_only=True)[-1]
        return self.step([token], total)[-1]

    def greedy(self, prompt_ids: list[int], n: int, eos_ids: list[int]) -> list[int]:
        """Greedy continuation through the state (argmax each step, stop after an eos id, which is kept)."""
        out: list[int] = []
        for tok in self.continuation(prompt_ids, len(prompt_ids) + n):
            out.append(tok)
            if tok in eos_ids or len(out) >= n:
                break
        return out


class SimulatedModel(PackageDriver):
    """The package's MIL program in the numpy interpreter (level `simulated`)."""

    level = "simulated"
    checks_drafts = True
    runs_on = ("edgepack's numpy MIL interpreter on this build host's CPU, not an iPhone (a device runs the same "
               "program in Core ML, far faster)")

    def __init__(self, package: Path, function: str | None = None) -> None:
        from targets.ios.mil_interpreter import MilInterpreter, load_program

        program, self.spec = load_program(package, function)
        self.vm = MilInterpreter(program)
        self._read_window()

    def reset_state(self) -> None:
        self.vm.reset_state()

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
        logits = self.vm.predict(inputs, last_positions)["logits"]
        self.first_nonfinite = self.vm.first_nonfinite
        return logits


class CoreMLRuntimeModel(PackageDriver):
    """The package in the real Core ML runtime (macOS 15+ only; level `executed`). Untested on Linux hosts."""

    level = "executed"
    runs_on = "Core ML on this Mac's CPU"

    def __init__(self, package: Path, function: str | None = None) -> None:
        import coremltools as ct

        from targets.ios.multifunction import function_spec

        self.model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY, function_name=function)
        self.spec = self.model.get_spec() if function is None else function_spec(self.model.get_spec(), function)
        self._read_window()
        self.state: Any = None

    def reset_state(self) -> None:
        self.state = self.model.make_state()

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
        return np.asarray(self.model.predict(inputs, state=self.state)["logits"])


def coreml_runtime_available() -> bool:
    """True on macOS with coremltools' native runtime (the only place `executed` is possible)."""
    import sys

    if sys.platform != "darwin":
        return False
    try:
        from coremltools import libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def _feature(features: Any, name: str) -> Any:
    return next((f for f in features if f.name == name), None)


def check_spec(spec: Any, max_context: int, sliding: bool, state_shape: tuple[int, ...] | None = None) -> tuple[
        list[str], dict[str, Any]]:
    """Return (failures, summary) of the model description against swift-transformers' contract."""
    failures: list[str] = []
    desc = spec.description
    names = {"inputs": [f.name for f in desc.input], "outputs": [f.name for f in desc.output],
             "states": [f.name for f in desc.state]}
    expected_inputs = ["inputIds", "fullAttentionMask"] + (["slidingAttentionMask"] if sliding else [])
    if sorted(names["inputs"]) != sorted(expected_inputs):
        failures.append(f"inputs are {names['inputs']}, swift-transformers expects {expected_inputs}")
    if names["outputs"] != ["logits"]:
        failures.append(f"outputs are {names['outputs']}, swift-transformers expects ['logits']")
    if sorted(names["states"]) != ["keyCache", "valueCache"]:
        failures.append(f"states are {names['states']}, swift-transformers expects keyCache and valueCache")
    ids = _feature(desc.input, "inputIds")
    if ids is not None:
        array = ids.type.multiArrayType
        ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
        names["inputIds_range"] = ranges
        if array.dataType != array.INT32:
            failures.append("inputIds is not int32")
        if not ranges or ranges[-1] != (1, max_context):
            failures.append(f"inputIds' sequence range is {ranges[-1] if ranges else 'fixed'}, expected "
                            f"(1, {max_context}) (swift-transformers needs a flexible length to prefill and extend)")
    for mask in expected_inputs[1:]:
        feature = _feature(desc.input, mask)
        if feature is not None and feature.type.multiArrayType.dataType != feature.type.multiArrayType.FLOAT16:
            failures.append(f"{mask} is not float16 (swift-transformers builds Float16 masks)")
    for state in desc.state:
        array = state.type.stateType.arrayType
        if array.dataType != array.FLOAT16:
            failures.append(f"state {state.name} is not float16")
        shape = tuple(array.shape)
        names[f"{state.name}_shape"] = list(shape)
        if state_shape is not None and shape != state_shape:
            failures.append(f"state {state.name} has shape {shape}, expected {state_shape}")
        if shape and shape[-2] != max_context:
            failures.append(f"state {state.name} holds {shape[-2]} positions, expected {max_context}")
    names["specification_version"] = spec.specificationVersion
    if spec.specificationVersion < IOS18_SPEC_VERSION:
        failures.append(f"specification version {spec.specificationVersion} < {IOS18_SPEC_VERSION} (iOS 18): "
                        "stateful models need iOS 18")
    if spec.WhichOneof("Type") != "mlProgram":
        failures.append(f"the package holds a {spec.WhichOneof('Type')}, not an ML Program")
    else:
        opset = spec.mlProgram.functions["main"].opset
        names["opset"] = opset
        if opset != IOS18_OPSET:
            failures.append(f"the program's opset is {opset}, expected {IOS18_OPSET} (iOS 18, stateful)")
    meta = dict(desc.metadata.userDefined)
    required = ["co.huggingface.exporters.name"] + (["co.huggingface.exporters.sliding_window"] if sliding else [])
    missing = [key for key in required if not meta.get(key)]
    if missing:
        failures.append(f"metadata lacks {', '.join(missing)} (swift-transformers reads it)")
    names["metadata"] = {k: v for k, v in meta.items() if k.startswith(("co.huggingface", "edgepack"))}
    return failures, names


def open_package(package: Path, executed: bool = False, function: str | None = None) -> PackageDriver:
    """The package's driver: its program in numpy (`simulated`) or, on macOS, in Core ML (`executed`); with
    `function`, that function of a multifunction package (a fleet's specialist)."""
    return CoreMLRuntimeModel(package, function) if executed else SimulatedModel(package, function)


def text_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """Text as EdgeModel encodes it for the package: without special tokens (the contract adds BOS)."""
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def package_generator(model: PackageDriver, tokenizer: Any, contract: Contract, max_context: int,
                      drafts: dict[str, str] | None = None) -> Generator:
    """Answer eval rows with the package the way EdgeModel.run does: the contract's prompt encoded without
    special tokens (BOS added by the contract), greedy, a constrained labels contract held to its labels as the
    Swift bridge holds it (LabelChoice; no grammar for anything else); `drafts`, each
    rendered prompt's likely answer (fp32's), checked by the driver in one prediction (continuation)."""
    encode = text_encoder(tokenizer)
    by_ids = {tuple(prompt_ids(contract, encode(prompt))): encode(answer) for prompt, answer in (drafts or {}).items()}
    choice = LabelChoice.of(contract, encode) if model.chooses_labels else None
    return token_generator(contract, encode, lambda ids: model.continuation(ids, max_context, by_ids.get(tuple(ids),
                                                                                                        ()), choice),
                           tokenizer.decode)


def shared_prefix(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The token ids every prompt starts with, short of the shortest prompt's last (each row prefills one at least)."""
    if not prompts:
        return []
    first, shortest = list(prompts[0]), min(len(p) for p in prompts) - 1
    length = 0
    while length < shortest and all(p[length] == first[length] for p in prompts):
        length += 1
    return first[:length]


def eval_prompt_ids(contract: Contract, rows: Sequence[EvalRow], tokenizer: Any) -> list[list[int]]:
    """Each row's prompt as the package is given it (package_generator's encoding)."""
    encode = text_encoder(tokenizer)
    return [prompt_ids(contract, encode(render_prompt(contract, row.input, row.instruction))) for row in rows]


def baseline_drafts(contract: Contract, rows: Sequence[EvalRow], baseline: Sequence[str]) -> dict[str, str]:
    """Each row's rendered prompt and the fp32 model's answer to it: the drafts package_generator checks."""
    return {render_prompt(contract, row.input, row.instruction): answer
            for row, answer in zip(rows, baseline, strict=True)}


def answer_eval_set(model: PackageDriver, contract: Contract, rows: Sequence[EvalRow], tokenizer: Any,
                    max_context: int, baseline: Sequence[str] | None) -> tuple[TaskMetrics, list[str], list[str]]:
    """The eval set answered through the program the driver runs (a Core ML package, an .aimodel), every row:
    (metrics, failures, notes)."""
    before, first_before = model.nonfinite_steps, model.first_nonfinite
    answered, drafted = model.answered, model.drafted
    drafts = baseline_drafts(contract, rows, baseline) if model.checks_drafts and baseline else None
    start = time.perf_counter()
    prefix = shared_prefix(eval_prompt_ids(contract, rows, tokenizer)) if model.reuses_prefix else []
    if prefix:
        model.hold_prefix(prefix)
    try:
        metrics, _ = score(contract, rows, package_generator(model, tokenizer, contract, max_context, drafts),
                           baseline)
    finally:
        if prefix:
            model.hold_prefix(())  # the held state is released
    seconds = time.perf_counter() - start
    failures = []
    nonfinite = model.nonfinite_steps - before
    if nonfinite or (first_before is None and model.first_nonfinite):
        failures.append(f"non-finite numbers: {nonfinite} prediction(s) while answering the eval set gave NaN or "
                        f"infinite logits; first non-finite value at op {model.first_nonfinite or 'logits'}")
    how = ("each prompt in one prediction and then one token per prediction through the state, as "
           f"EdgeModel.generate does; latency and tokens/s are {model.runs_on}")
    if drafts:
        how = (f"the program's own greedy tokens, {model.drafted - drafted} of {model.answered - answered} taken "
               "from one prediction of the prompt with the fp32 model's answer as a draft (each the program's argmax "
               f"there, ahead of the runner-up by at least {DRAFT_MARGIN:g}), the rest one token per prediction "
               "as EdgeModel.generate decodes (targets.ios.verify, continuation); latency and tokens/s are "
               f"therefore not the bridge's, and are {model.runs_on}")
    notes = [f"task: all {metrics.rows} eval rows answered through the model's own program ({seconds:.0f} s), "
             f"greedy: {how}"]
    if prefix:
        notes.append(f"the {len(prefix)} token ids every prompt starts with were prefilled once, and each row started "
                     "from a copy of that state (a prefix cache; the rows' latencies leave that prefill out)")
    if contract.constrained and model.chooses_labels and contract.task == "labels":
        notes.append("answers held to the labels' token paths, as EdgeModel (Swift) holds them (LabelChoice.swift)")
    elif contract.constrained:
        notes.append(f"{model.unconstrained}: answers are decoded unconstrained on iOS")
    return metrics, failures, notes


def verify_package(model: PackageDriver, artifact: str, quant: str, gate: Any, reference: ReferenceLogits,
                   eos_ids: list[int], hf_tokenizer: Any, max_context: int, sliding: bool,
                   max_positions: int | None = None) -> VerificationResult:
    """Spec check + comparison with the fp32 reference through `model` (open_package); `max_positions` caps
    the compared positions."""
    executed = model.level == "executed"
    failures, spec_summary = check_spec(model.spec, max_context, sliding)
    acc = FidelityAccumulator()
    compared = 0
    for i, full in enumerate(reference.sequences):
        ids = full[:max_context]
        if max_positions is not None and compared >= max_positions:
            break
        if max_positions is not None:
            ids = ids[:max(DECODE_STEPS + 1, max_positions - compared)]
        art = model.logits(ids)
        ref = np.asarray(reference.logits(i)[:len(ids)])
        finite = np.nan_to_num(art, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)
        acc.add(ref, finite)
        if i == reference.perplexity_index and len(ids) == len(full):
            acc.add_perplexity(ids, ref, finite)
        compared += len(ids)
    metrics = acc.result()
    n_greedy = len(reference.greedy_ids) or 24
    greedy_ids = model.greedy(reference.greedy_prompt_ids, n_greedy, eos_ids)
    how = ("executed: Core ML on this Mac (CPU only)" if executed else
           "simulated: the package's MIL program evaluated op by op in numpy (fp16 values, fp32 accumulation "
           "inside each op); no Core ML runtime ran (none exists off Apple platforms)")
    notes = [f"{how}; each golden sequence prefilled, then its last {DECODE_STEPS} tokens decoded one by one "
             "through the keyCache/valueCache state",
             f"logit cosine vs fp32 transformers: {metrics.cosine:.4f}"]
    if max_positions is not None:
        notes.append(f"compared {metrics.positions} of {reference.positions} golden positions (cap {max_positions})")
    if model.nonfinite_steps or model.first_nonfinite:
        failures.append(f"fp16 overflow: {model.nonfinite_steps} prediction(s) gave non-finite logits; first "
                        f"non-finite value at op {model.first_nonfinite or 'logits'}")
    if metrics.cosine is not None and metrics.cosine < 0.5:
        failures.append(f"logits unrelated to the reference (cosine {metrics.cosine:.3f}): the fp16 program is "
                        "broken (overflow or all-zero logits)")
    failures += gate.check(metrics)
    text = hf_tokenizer.decode(greedy_ids) if hf_tokenizer is not None else ""
    ref_text = hf_tokenizer.decode(reference.greedy_ids) if hf_tokenizer is not None else ""
    if greedy_ids != reference.greedy_ids:
        same = next((i for i, (a, b) in enumerate(zip(greedy_ids, reference.greedy_ids, strict=False)) if a != b),
                    min(len(greedy_ids), len(reference.greedy_ids)))
        notes.append(f"greedy ids agree with the reference for the first {same} of {len(reference.greedy_ids)} tokens")
    return VerificationResult(
        artifact=artifact, format="mlpackage", quant=quant, level=model.level,
        runtime=("Core ML (macOS, CPU only)" if executed else
                 "numpy MIL interpreter (edgepack) over coremltools' milproto loader") + "; spec: "
                f"{', '.join(spec_summary['inputs'])} -> logits, states {', '.join(spec_summary['states'])}",
        metrics=metrics, greedy_match=greedy_ids == reference.greedy_ids, greedy_text_reference=ref_text,
        greedy_text=text, gate=gate.describe(), failures=failures, notes=notes,
    )


def simulate(package: Path, artifact: str, quant: str, gate: Any, inputs: VerifyInputs, max_context: int,
             sliding: bool, max_positions: int | None = None, executed: bool = False,
             function: str | None = None) -> Verified:
    """verify_package on a package and, with an eval set, its answers to every row: (result, task metrics).
    Runs in a child process during a build (targets.ios.stages.verified_package)."""
    tokenizer = inputs.hf_tokenizer()
    model = open_package(package, executed, function)
    result = verify_package(model, artifact, quant, gate, inputs.reference, list(inputs.contract.eos_ids), tokenizer,
                            max_context, sliding, max_positions)
    if not inputs.eval_rows:
        return result, None
    metrics, failures, notes = answer_eval_set(model, inputs.contract, inputs.eval_rows, tokenizer, max_context,
                                               inputs.baseline)
    result.failures += failures
    result.notes += notes
    return result, metrics


def _serve(request: dict[str, Any]) -> Verified:
    return simulate(Path(request["package"]), request["artifact"], request["quant"], gate_from_dict(request["gate"]),
                    VerifyInputs.from_dict(request["inputs"]), request["max_context"], request["sliding"],
                    request["max_positions"], request["executed"], request.get("function"))


def eager_compressed_model(folder: Path, compression: Any, lora: AdapterSource | None = None) -> Any:
    """transformers in fp32 holding the weights a compression would store.

    Every decoder linear and the embedding / lm_head table are replaced by their dequantized values
    from coreml_quantize.searched_affine (the function the Core ML pass calls, with the same
    calibration weights), so the screen and the package hold the same numbers; only the package's
    fp16 arithmetic is left out (on Gemma 3 270M: int4-mixed screened 0.933, simulated 0.929 top-1).
    With `lora` (a compression that keeps the adapter apart), an adapted linear holds its base weight's
    dequantized values plus the adapter's product, as the package computes them.
    """
    import torch

    from packager.adapter import adapted_base_weights
    from packager.calibration import decoder_linear_key
    from packager.verify.fp32_model import load_fp32_whole
    from targets.ios.convert import column_importance
    from targets.ios.quantize import dequantize, searched_affine

    model = load_fp32_whole(folder, "eager")
    importance = column_importance(model, folder)

    adapted = adapted_base_weights(lora) if lora else {}

    def snap(weight: torch.Tensor, bits: int, columns: np.ndarray | None, source: torch.Tensor | None = None) -> None:
        data, scale, offset = searched_affine((weight if source is None else source).detach().float().numpy(),
                                              bits, 32, columns)
        weight.copy_(torch.from_numpy(dequantize(data, scale, offset)))

    with torch.no_grad():
        for name, module in model.named_modules():
            key = decoder_linear_key(name)
            if key and isinstance(module, torch.nn.Linear):
                base, delta = adapted.get(f"{name}.weight", (None, None))
                snap(module.weight, compression.linear_bits(name), importance.get(key), base)
                if delta is not None:
                    module.weight += (delta.b.float() @ delta.a.float()) * delta.scaling
        table = model.get_input_embeddings().weight
        snap(table, 8, None)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != table.data_ptr():
            snap(head.weight, 8, None)
    return model


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.verify.child_verify): a package's verification request in, its result out."""
    return serve_verification(__doc__.splitlines()[0], _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
