"""Shared, cached stages of one build, asked for by key: the F16 GGUF is made once per build
(and once per checkpoint across builds), whichever targets need it.

Every cached stage goes through packager.stage_cache: entries are written whole or not at all,
checked against their recorded sha256 on reuse, and copied (never linked) into bundles.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.checkpoint import Checkpoint
from packager.context_size import DEFAULT_CONTEXT, ContextChoice, context_for_task
from packager.contract import Contract, PromptFormat, apply_task_config, contract_from_checkpoint, render_prompt
from packager.contract_check import ContractCheck, check_contract
from packager.devices import estimate
from packager.errors import InternalError, UnsupportedError
from packager.fingerprint import cache_root, options_digest
from packager.formats.gguf_quantize import quantize_gguf
from packager.formats.gguf_writer import NUMPY_TYPES, WRITER_VERSION, write_gguf
from packager.gguf_ladder import GGUF_LADDER, GgufChoice, choose_gguf, ladder_from, ladder_within
from packager.ladder import EAGER_SCREEN, walked
from packager.once import OnceMap, once_property
from packager.progress import Reporter
from packager.scheduler import HeavyStep, Scheduler, scheduler_for
from packager.stage_cache import CachedEntry, StageCache
from packager.target import TargetOptionValues, declared_options, runtime_memory_mb
from packager.threads import compute_threads
from packager.verify.compare import eager_fidelity
from packager.verify.fp32_model import load_fp32_model, resident_bytes
from packager.verify.gates import TaskGate, gate_for
from packager.verify.gguf_check import verify_gguf
from packager.verify.golden import GoldenSet, load_golden
from packager.verify.llama_cpp_runner import load_llama
from packager.verify.metrics import FidelityMetrics
from packager.verify.reference import ReferenceLogits, compute_reference, load_hf_tokenizer
from packager.verify.result import VerificationResult
from packager.verify.task_eval import (
    EvalRow,
    TaskMetrics,
    hf_generator,
    llama_cpp_generator,
    load_eval_set,
    score,
    score_batch,
)

if TYPE_CHECKING:
    from packager.runtime_adapter import RuntimeAdapter
    from packager.target import Target

# Bump when what a verification record holds or how it is computed changes, so old records are not reused.
VERIFICATION_SCHEMA = 6  # 6: fidelity sums over 16 positions at a time (last digits of ppl moved)
CONTRACT_CHECK_SCHEMA = 2  # 2: an undeclared rendering is always compared with the usual ones


@dataclass
class BuildOptions:
    """Options every target may read."""

    # GGUF type for every GGUF target; None: each target's own default (its default_quant).
    quant: str | None = None
    # None: sized from the task when an eval set bounds it, else 4096 (packager.context_size).
    context_length: int | None = None
    no_gate: bool = False
    name: str | None = None
    # Each target's own options (TargetOption) as given by flag or edgepack.toml: target name -> option
    # name -> value. A target reads them through for_target, which fills in its declared defaults.
    target_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # The user's task: an eval set (JSONL, seeds' format) and contract settings (edgepack.toml [contract]).
    eval_path: Path | None = None
    task: dict[str, Any] = dataclasses.field(default_factory=dict)
    task_source: str = "command-line flags"
    task_gate: TaskGate = dataclasses.field(default_factory=TaskGate)
    # Ship a LoRA input as its base's GGUF + a GGUF adapter where the runtime applies adapters (llama.cpp).
    runtime_adapter: bool = False

    def for_target(self, target: Target) -> TargetOptionValues:
        """Return `target`'s option values: those given, else its declared defaults."""
        return TargetOptionValues(target.name, declared_options(target), self.target_options.get(target.name, {}))

    def gguf_quant(self, target: Target) -> str:
        """The GGUF type `target` ships: --quant when given, else the default the target declares."""
        quant = self.quant or getattr(target, "default_quant", None)
        if quant is None:
            raise InternalError(f"target {target.name!r} asks for a GGUF but declares no default_quant; "
                                "set default_quant on its class (e.g. \"Q4_K_M\").")
        return quant


@dataclass(frozen=True)
class GgufFile:
    """One GGUF of the checkpoint in the stage cache: its file name and size in bytes."""

    name: str
    size: int


@dataclass(frozen=True)
class RungScreen:
    """One ladder rung as a target screens it in eager PyTorch: what it stores, its model, its records."""

    task_kind: str  # the task record's kind ("screen-pte-task"); its key adds the task and `stores`
    schema: int  # the target's verification schema: a change invalidates both records
    stores: dict[str, Any]  # what the rung stores (recipe / compression fields)
    fidelity_key: str
    label: str  # "screen <rung> (eager)"
    task_label: str  # "screen <rung> on the task (eager)"
    eager_model: Callable[[], Any]  # the rung's quantized model in transformers, fp32 arithmetic
    describe: Callable[[FidelityMetrics], str]


class BuildContext:
    """The shared stages of one build; targets ask for what they need."""

    def __init__(
        self, ckpt: Checkpoint, ckpt_digest: str, options: BuildOptions, reporter: Reporter,
        cache: Path | None = None, scheduler: Scheduler | None = None, base: BuildContext | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.ckpt_digest = ckpt_digest
        self.options = options
        self.reporter = reporter
        self.cache = cache or cache_root()
        # Targets may run at once (packager.scheduler): shared stages are computed once, heavy steps
        # hold memory from the scheduler's budget while they run.
        self.scheduler = scheduler or scheduler_for(ckpt, reporter, self.cache, jobs=1)
        self.stage_cache = StageCache(self.cache, reporter, self.scheduler.cancelled)
        self.golden: GoldenSet = load_golden()
        self._verified: OnceMap[VerificationResult] = OnceMap()
        self._ggufs: OnceMap[CachedEntry[GgufFile]] = OnceMap()
        self._gguf_choices: OnceMap[GgufChoice] = OnceMap()
        self._tokenizers = threading.local()
        self.contract_check: ContractCheck | None = None  # set with the contract when there is an eval set
        # The fp32 answers the contract check gave the rows it sampled, per rendering (the baseline reuses them).
        self._checked_answers: list[tuple[PromptFormat, Sequence[EvalRow], list[str]]] = []
        # For a merged LoRA input: its base model's stages when the caller shares them (a fleet's specialists
        # do); None: packager.runtime_adapter opens the base itself when it needs it.
        self.base = base

    @property
    def model_name(self) -> str:
        """The name the artifacts and apps carry: --name, else the checkpoint's."""
        return self.options.name or self.ckpt.name

    @property
    def context_length(self) -> int:
        """The context every target sets its runtime up for, capped by the model (see `context`)."""
        return self.context.tokens

    @once_property
    def context(self) -> ContextChoice:
        """--context-length when given; else sized from the eval set's prompts; else the general default."""
        if self.options.context_length is not None:
            return ContextChoice(self.ckpt.usable_context(self.options.context_length), "--context-length")
        if not self.eval_rows:
            return ContextChoice(self.ckpt.usable_context(DEFAULT_CONTEXT),
                                 f"the default {DEFAULT_CONTEXT} (no eval set bounds the prompts)")
        contract = self.contract

        def sized() -> ContextChoice:
            tokenizer = self.hf_tokenizer
            bos = 1 if contract.add_bos and contract.bos_id is not None else 0
            prompts = [render_prompt(contract, row.input, row.instruction) for row in self.eval_rows]
            longest_prompt = bos + max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            longest_golden = max(len(tokenizer(t, add_special_tokens=True)["input_ids"])
                                 for t in self.golden.sequences)
            return context_for_task(longest_prompt, contract.max_new_tokens, longest_golden)

        # Cached: tokenizing the eval set needs the transformers tokenizer, seconds of every warm build.
        key = options_digest("context", self.ckpt_digest, contract.as_dict(), self._eval_text,
                             self.golden.digest_source())[:24]
        choice = self.stage_cache.record("context", key, "context sized from the eval set", sized,
                                         encode=dataclasses.asdict, decode=lambda data: ContextChoice(**data),
                                         describe=lambda c: f"{c.tokens} tokens")
        usable = self.ckpt.usable_context(choice.tokens)
        return choice if usable == choice.tokens else ContextChoice(usable, choice.reason + ", capped by the model")

    @once_property
    def _eval_text(self) -> str:
        """The eval set file as given (stage keys hash it), read once per build."""
        return self.options.eval_path.read_text(encoding="utf-8") if self.options.eval_path else ""

    @once_property
    def eval_rows(self) -> list[EvalRow]:
        return load_eval_set(self.options.eval_path) if self.options.eval_path else []

    @once_property
    def contract(self) -> Contract:
        """The checkpoint's contract with the user's task on top; with an eval set, its prompt is the rendering
        the fp32 model answers best on when the declared one fails it (packager.contract_check)."""
        own = contract_from_checkpoint(self.ckpt)
        contract = own
        if self.options.task or self.eval_rows:
            contract = apply_task_config(contract, self.options.task, [r.output for r in self.eval_rows],
                                         self.options.task_source)
        if self.eval_rows:
            self.contract_check = self._checked(contract, own.prompt if own.prompt.source == "chat_template" else None)
            for message in self.contract_check.messages(self.eval_rows[0]):
                self.reporter.say(message)
            contract = dataclasses.replace(contract, prompt=self.contract_check.used.prompt)
        return contract

    def _checked(self, declared: Contract, chat: PromptFormat | None) -> ContractCheck:
        """The contract check of `declared` on the fp32 model (cached per checkpoint, contract and eval set)."""
        key = options_digest("contract-check", CONTRACT_CHECK_SCHEMA, self.ckpt_digest, declared.as_dict(),
                             self._eval_text)[:24]

        def check() -> ContractCheck:
            tokenizer = self.hf_tokenizer
            self.reporter.say("checking the contract's prompt on the fp32 model")
            with self.scheduler.step(self._fp32_step("fp32 model"), "the fp32 model (checking the contract)"):
                model = load_fp32_model(self.ckpt)

                def scorer(prompt: PromptFormat, rows: Sequence[EvalRow]) -> TaskMetrics:
                    variant = dataclasses.replace(declared, prompt=prompt)
                    metrics, answers = score_batch(variant, rows, hf_generator(model, tokenizer, variant), None)
                    self._checked_answers.append((prompt, rows, answers))
                    return metrics

                found = check_contract(declared, chat, self.eval_rows, scorer,
                                       template_declared="prompt_template" in self.options.task)
                model = None  # released before the memory is handed back
            return found

        return self.stage_cache.record("contract", key, "contract check (fp32)", check, encode=ContractCheck.as_dict,
                                       decode=ContractCheck.from_dict,
                                       describe=lambda c: f"{c.used.name}: accuracy {c.used.accuracy:.3f}")

    def task_key(self, decoding: bool = True) -> str:
        """Key of the task setup; the fp32 baseline decodes unconstrained, so it leaves `constrained` out."""
        contract = self.contract.as_dict()
        if not decoding:
            contract.pop("constrained")
        return options_digest("task", self.ckpt_digest, contract, self._eval_text)[:24]

    @once_property
    def baseline_answers(self) -> list[str]:
        """The fp32 transformers model's own answers to the eval set (cached per checkpoint + task).

        Answered in batches, each row's answer the one it gets alone (tests/test_baseline_batching.py),
        so a record written by the former one-row path holds the same answers and stays valid.
        """
        def answer() -> list[str]:
            contract, tokenizer = self.contract, self.hf_tokenizer
            # The contract check of this build already answered the first rows under this prompt.
            known = next((answers for prompt, sampled, answers in self._checked_answers
                          if prompt == contract.prompt and list(sampled) == self.eval_rows[:len(sampled)]), [])
            rows = self.eval_rows[len(known):]
            if not rows:
                return list(known)
            self.reporter.say(f"answering {len(rows)} eval rows with the fp32 model (baseline"
                              + (f"; {len(known)} answered by the contract check)" if known else ")"))
            with self.scheduler.step(self._fp32_step("fp32 baseline"), "the fp32 baseline"):
                model = load_fp32_model(self.ckpt)
                _, answers = score_batch(contract, rows, hf_generator(model, tokenizer, contract), None)
                del model  # released before the memory is handed back
            return [*known, *answers]

        return self.stage_cache.record("baseline", self.task_key(decoding=False), "fp32 baseline on the eval set",
                                       answer, describe=lambda answers: f"{len(answers)} rows")

    def reference_next_token(self, ids: list[int]) -> int:
        """The fp32 source model's greedy next token after `ids` (settles runtime disagreements).

        Loaded for the question and dropped after it: a disagreement is rare, and a model kept for the
        rest of the build would sit beside every later conversion child.
        """
        import torch

        # An in-process model step like any other: loading it must not overlap another thread's torch work.
        with self.scheduler.step(self._fp32_step("fp32 model"), "the fp32 model (settling a runtime disagreement)"), \
                torch.inference_mode():
            model = load_fp32_model(self.ckpt)
            token = int(torch.argmax(model(torch.tensor([ids])).logits[0, -1]))
            del model
            return token

    def _fp32_step(self, kind: str) -> HeavyStep:
        """An fp32 model step: the weights it keeps resident (all of a small model; a streamed one's embedding
        table and one block) and half as much again, plus 512 MB for a golden text's logits and activations."""
        return HeavyStep(kind, 1.5 * resident_bytes(self.ckpt) / (4 * self.ckpt.parameter_count), fixed=2**29)

    @property
    def fp32_steps(self) -> list[HeavyStep]:
        """The fp32 model steps every target's build may wait on: the reference, and the baseline with an eval set."""
        return [self._fp32_step("fp32 reference")] + (
            [self._fp32_step("fp32 baseline")] if self.options.eval_path else [])

    def task_metrics_gguf(self, path: Path, lora: Path | None = None) -> TaskMetrics:
        """Answer the eval set with the GGUF in llama.cpp (greedy, under the contract), with the GGUF LoRA
        adapter `lora` applied at run time when given."""
        baseline = self.baseline_answers
        llm = load_llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=1024,
                         n_threads=compute_threads(), verbose=False, seed=0)
        try:
            constrained = self.contract.constrained and self.contract.task == "labels"
            metrics, _ = score(self.contract, self.eval_rows, llama_cpp_generator(llm, self.contract, constrained),
                               baseline, constrained)
        finally:
            llm.close()
        return metrics

    def task_metrics_hf(self, model: Any, baseline: Sequence[str]) -> TaskMetrics:
        """The eval set answered by a transformers model (an eager screen's quantized copy), greedy and
        unconstrained, against the fp32 baseline's answers."""
        generate = hf_generator(model, self.hf_tokenizer, self.contract)
        return score_batch(self.contract, self.eval_rows, generate, baseline)[0]

    def screened(self, rung: RungScreen, task_if: Callable[[FidelityMetrics], bool] | None = None) -> FidelityMetrics:
        """Predicted fidelity of a ladder rung: its eager quantized model on the golden positions (cached).

        Building that model is most of a screen's cost (a minute for Gemma 3 270M's searched 4-bit weights).
        So when `task_if(fidelity)` says the verdict needs the eval answers (packager.ladder.task_screened),
        the same model answers the eval set in the same step, recorded as `screened_task` would record it.
        """
        def screen() -> FidelityMetrics:
            reference = self.reference
            with_task = task_if is not None and bool(self.eval_rows)
            if with_task:
                self.baseline_answers  # noqa: B018  (its own heavy step, taken before this one)
            with self.scheduler.step(EAGER_SCREEN, rung.label):
                model = rung.eager_model()
                fidelity = eager_fidelity(model, reference)
                if with_task and task_if is not None and task_if(fidelity):
                    self._task_record(rung, functools.partial(self.task_metrics_hf, model, self.baseline_answers))
                del model
                return fidelity

        return self.stage_cache.record("screen", rung.fidelity_key, rung.label, screen,
                                       encode=FidelityMetrics.as_dict, decode=lambda data: FidelityMetrics(**data),
                                       describe=rung.describe)

    def screened_task(self, rung: RungScreen) -> TaskMetrics:
        """The eval set answered by a ladder rung's eager quantized model (built only when no record exists)
        against the fp32 baseline; cached per checkpoint + task + what the rung stores. A target asks for it
        when the screen's verdict needs it (packager.ladder.task_screened)."""
        def screen() -> TaskMetrics:
            baseline = self.baseline_answers  # its own heavy step, taken before this one
            with self.scheduler.step(EAGER_SCREEN, rung.task_label):
                model = rung.eager_model()
                metrics = self.task_metrics_hf(model, baseline)
                del model
                return metrics

        return self._task_record(rung, screen)

    def _task_record(self, rung: RungScreen, compute: Callable[[], TaskMetrics]) -> TaskMetrics:
        return self.stage_cache.record(
            "screen", options_digest(rung.task_kind, rung.schema, self.task_key(), rung.stores)[:24], rung.task_label,
            compute, encode=TaskMetrics.as_dict, decode=lambda data: TaskMetrics(**data),
            describe=lambda t: f"accuracy {t.exact_match:.3f} (fp32 {t.baseline_exact_match or 0:.3f}), "
                               f"validity {t.validity:.3f}")

    def attach_task(self, result: VerificationResult, metrics: TaskMetrics) -> None:
        """Record an artifact's task metrics on its verification and hold them to the task gate."""
        result.task = metrics
        result.failures += self.options.task_gate.check(metrics)
        result.gate += "; " + self.options.task_gate.describe()

    @property
    def hf_tokenizer(self) -> Any:
        """This thread's transformers tokenizer: a fast tokenizer used by two threads at once fails
        ("Already borrowed"), and targets run in threads."""
        tokenizer = getattr(self._tokenizers, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._tokenizers.tokenizer = load_hf_tokenizer(self.ckpt)
        return tokenizer

    @once_property
    def reference(self) -> ReferenceLogits:
        return compute_reference(self.ckpt, self.golden, self.ckpt_digest, self.contract.eos_ids, self.stage_cache,
                                 self.reporter.percent("reference logits (fp32)"),
                                 lambda: self.scheduler.step(self._fp32_step("fp32 reference"), "the fp32 reference"))

    def chosen_gguf(self, target: Target, applies_adapters: bool = False) -> GgufChoice:
        """The GGUF type `target` ships, its file and verification (packager.gguf_ladder): --quant as given;
        else the first rung up from the target's default that passes every gate (under --no-gate, the
        default itself). Targets that start from the same type share one walk. With --runtime-adapter, a
        target whose runtime `applies_adapters` gets the base's GGUF and the adapter (packager.runtime_adapter)."""
        rungs = self.gguf_rungs(target)
        explicit = bool(self.options.quant)
        walked_here = []
        runtime = applies_adapters and self.runtime_adapter is not None

        def walk() -> GgufChoice:
            walked_here.append(True)
            if runtime:
                return self.runtime_adapter.choice(rungs, explicit)
            return choose_gguf(rungs, self._built_and_verified, explicit=explicit)

        choice = self._gguf_choices.get(("adapter " if runtime else "") + " ".join(rungs), walk)
        if not walked_here:  # another target walked it (or is walking it, and this one waited)
            self.reporter.stage(f"gguf {choice.quant}", True, 0.0, "shared stage, already built in this build")
        note = None if explicit else self._gguf_ladder(target, self.options.gguf_quant(target))[1]
        return dataclasses.replace(choice, ceiling_note=note) if note else choice

    def gguf_rungs(self, target: Target) -> tuple[str, ...]:
        """The GGUF types `target` may ship, tried in order: --quant alone; under --no-gate the target's default
        alone; else the ladder up from that default (from below it when it exceeds the runtime's memory)."""
        start = self.options.gguf_quant(target)
        if self.options.quant:
            return (start,)
        return walked(self._gguf_ladder(target, start)[0], self.options.no_gate)

    def _gguf_ladder(self, target: Target, start: str) -> tuple[tuple[str, ...], str | None]:
        """The ladder from `start` within the target's runtime memory ceiling, and why it starts lower if it does."""
        ceiling = runtime_memory_mb(target)
        if ceiling is None:
            return ladder_from(start), None

        def need_mb(quant: str) -> float:
            return estimate(self.ckpt.parameter_count, self.ckpt.config, quant, self.context_length).total_mb

        rungs = ladder_within(start, lambda quant: need_mb(quant) <= ceiling)
        if not rungs:
            smallest = GGUF_LADDER[0]
            raise UnsupportedError(
                f"{target.name}: this {self.ckpt.parameter_count / 1e9:.1f}B-parameter model needs about "
                f"{need_mb(smallest):,.0f} MB to run even as {smallest} at a {self.context_length}-token context, "
                f"more than the {ceiling:,.0f} MB its runtime can address. Use a smaller model, or a shorter "
                "--context-length if the model's weights alone fit.")
        if rungs[0] == start:
            return rungs, None
        return rungs, (f"{start} (the default) needs about {need_mb(start):,.0f} MB at a {self.context_length}-token "
                       f"context, over the {ceiling:,.0f} MB its runtime can address: the ladder starts at "
                       f"{rungs[0]} ({need_mb(rungs[0]):,.0f} MB)")

    def _built_and_verified(self, quant: str) -> tuple[Path, VerificationResult]:
        return self.gguf(quant), self.verify_gguf(quant, f"model-{quant}.gguf")

    def gguf(self, quant: str) -> Path:
        """Return the cached GGUF of this checkpoint in `quant`, building F16 first when needed."""
        return self.gguf_file(quant)[0]

    def gguf_file(self, quant: str) -> tuple[Path, str]:
        """The cached GGUF of this checkpoint in `quant` and its sha256 (checked when its entry was opened)."""
        entry = self._gguf_entry(quant)
        return entry.path(entry.value.name), entry.sha256(entry.value.name)

    @once_property
    def runtime_adapter(self) -> RuntimeAdapter | None:
        """The input adapter kept apart from its base, under --runtime-adapter (None otherwise)."""
        if not self.options.runtime_adapter or self.ckpt.origin.get("kind") != "peft-adapter":
            return None
        from packager.runtime_adapter import RuntimeAdapter

        return RuntimeAdapter(self)

    def _gguf_entry(self, quant: str) -> CachedEntry[GgufFile]:
        built_here = []

        def build() -> CachedEntry[GgufFile]:
            built_here.append(quant)
            return self._new_gguf_entry(quant)

        entry = self._ggufs.get(quant, build)
        if not built_here:  # another target built it (or is building it, and this one waited)
            self.reporter.stage(f"gguf {quant}", True, 0.0, "shared stage, already built in this build")
        return entry

    def _new_gguf_entry(self, quant: str) -> CachedEntry[GgufFile]:
        name = f"model-{quant}.gguf"

        def build(folder: Path) -> GgufFile:
            if quant in NUMPY_TYPES:
                self.reporter.say(f"writing GGUF {quant} (streaming {len(self.ckpt.tensors)} tensors)")
                write_gguf(self.ckpt, folder / name, quant, self.reporter.percent(f"gguf {quant}"))
            else:
                source = self.gguf("F16")
                self.reporter.say(f"quantizing F16 -> {quant} with llama.cpp's quantizer")
                quantize_gguf(source, folder / name, quant)
            return GgufFile(name, (folder / name).stat().st_size)

        return self.stage_cache.entry(
            "gguf", options_digest("gguf", WRITER_VERSION, self.ckpt_digest, quant)[:24], f"gguf {quant}", build,
            encode=dataclasses.asdict, decode=lambda data: GgufFile(**data),
            describe=lambda gguf: f"{gguf.name}, {gguf.size / 2**20:.1f} MB")

    def verify_gguf(self, quant: str, artifact: str) -> VerificationResult:
        """Verify the GGUF in llama.cpp, once per file content (targets sharing it share the result)."""
        verified = self._verified.get(quant, lambda: self._verify_gguf_file(quant))
        return dataclasses.replace(verified, artifact=artifact)

    def _verify_gguf_file(self, quant: str) -> VerificationResult:
        gguf = self._ggufs.get(quant, lambda: self._new_gguf_entry(quant))
        path = gguf.path(gguf.value.name)
        return self.verified_gguf(path, gguf.sha256(path.name), quant)  # sha256 checked when the entry was opened

    def verified_gguf(self, path: Path, digest: str, quant: str, lora: tuple[Path, str] | None = None
                      ) -> VerificationResult:
        """The GGUF at `path` (sha256 `digest`), with the GGUF LoRA adapter `lora` (path, sha256) applied when
        given, verified in llama.cpp against this checkpoint's fp32 model: golden text, then the eval set.
        Cached per file content, golden set and task."""
        if lora is not None:
            digest = f"{digest}+{lora[1]}"
        adapter = lora[0] if lora else None
        artifact = f"{path.name} + {adapter.name}" if adapter else path.name
        what = f"GGUF {quant}" + (f" + LoRA {adapter.name}" if adapter else "")
        task_key = self.task_key() if self.eval_rows else ""
        key = options_digest("verify-gguf", VERIFICATION_SCHEMA, digest, self.golden.digest_source(), task_key)[:24]

        def verify() -> VerificationResult:
            reference = self.reference
            self.reporter.say(f"verifying {what} in llama.cpp ({reference.positions} positions)")
            result = verify_gguf(path, artifact, quant, reference, self.golden, self.contract, self.hf_tokenizer,
                                 lora=adapter)
            if self.eval_rows:
                self.reporter.say(f"answering {len(self.eval_rows)} eval rows with {what} in llama.cpp")
                self.attach_task(result, self.task_metrics_gguf(path, adapter))
            return result

        label = f"verify gguf {quant}" + (f" + {adapter.name}" if adapter else "")
        result = self.stage_cache.record("verify", key, label, verify,
                                         encode=VerificationResult.as_dict, decode=VerificationResult.from_dict,
                                         binds=digest,
                                         describe=lambda r: r.verdict_line(gate_for(quant), self.options.task_gate))
        # A stored record's verdict is not taken on trust: its gates are applied again to its numbers.
        result.reapply_gates(gate_for(quant), self.options.task_gate)
        return result
