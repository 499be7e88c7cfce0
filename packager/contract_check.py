"""Is the prompt the one the model was fine-tuned with? Checked on the fp32 model before anything is judged.

Every artifact is judged against the fp32 model's own answers under the contract. When the contract
renders the eval rows differently from how the fine-tune saw them in training, the fp32 model itself
answers badly (measured: a LoRA classifier trained on its chat template with "{instruction}: {input}"
scored 0.274 with 0.24 label validity under the plain rendering, 0.833 under its own), and every
gate then compares artifacts with a broken baseline.

So, with an eval set, the fp32 model first answers a sample of its rows under the contract. Without a
declared prompt_template that rendering is only edgepack's guess (the chat template around the bare
input): the renderings fine-tunes are usually trained with are always scored too (the checkpoint's
chat template or none, around the instruction and input joined in the common ways), and a clearly
better one is used, the build saying so loudly. A guess can be valid and still wrong: a LoRA trained
on "{instruction}: {input}" in Gemma's chat template answered 0.688 under the bare input with every
answer a valid label, 0.833 under its own rendering (benchmarks/contract_detection.py). A declared
template is scored alone while it clears the floors; below them, the candidates are scored and a
clearly better one stops the build (exit 2) with the table, because the user's declaration and the
model disagree. A baseline still below the floors after that is reported, never silently judged against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from packager.contract import Contract, PromptFormat, render_prompt
from packager.errors import BadInputError
from packager.verify.task_eval import EvalRow, TaskMetrics

# Below either floor the fp32 model is not doing the task as declared: look for the rendering it knows.
VALIDITY_FLOOR = 0.9
ACCURACY_FLOOR = 0.5
# Rows the candidates are scored on (the first ones of the eval set): enough to tell renderings apart.
SAMPLE_ROWS = 32
# How the instruction and input are usually joined in a fine-tune's training prompt.
JOINS = ("{input}", "{instruction}: {input}", "{instruction}\n{input}", "{instruction}\n\n{input}",
         "{instruction} {input}")


@dataclass(frozen=True)
class Rendering:
    """One way of rendering the eval rows, and how the fp32 model did under it."""

    name: str
    prompt: PromptFormat
    accuracy: float
    validity: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "accuracy": self.accuracy, "validity": self.validity,
                "prompt": dataclasses.asdict(self.prompt)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rendering:
        return cls(data["name"], PromptFormat(**data["prompt"]), data["accuracy"], data["validity"])


@dataclass
class ContractCheck:
    """What the check found: the declared rendering's scores, the candidates tried, and what is used."""

    declared: Rendering
    used: Rendering
    candidates: list[Rendering] = field(default_factory=list)
    sample_rows: int = 0

    @property
    def changed(self) -> bool:
        return self.used.prompt != self.declared.prompt

    @property
    def below_floor(self) -> bool:
        return self.used.validity < VALIDITY_FLOOR or self.used.accuracy < ACCURACY_FLOOR

    def table(self) -> str:
        rows = [f"  {'rendering':<46} accuracy  validity"]
        rows += [f"  {r.name:<46} {r.accuracy:>8.3f}  {r.validity:>8.3f}" for r in self.candidates or [self.declared]]
        return "\n".join(rows)

    def messages(self, first_row: EvalRow) -> list[str]:
        """What the build says about the contract (report notes; printed when something is off)."""
        said = []
        if self.changed:
            said.append(
                f"CONTRACT: the fp32 model answered {self.sample_rows} eval rows with accuracy "
                f"{self.declared.accuracy:.3f} / validity {self.declared.validity:.3f} under the declared prompt "
                f"({self.declared.name}), {self.used.accuracy:.3f} / {self.used.validity:.3f} under "
                f"{self.used.name}: the model was probably fine-tuned on the latter, which this build uses. "
                "Declare it (prompt_template in edgepack.toml) to silence this. First row rendered: "
                f"{render_prompt(Contract(prompt=self.used.prompt), first_row.input, first_row.instruction)!r}")
        if self.below_floor:
            said.append(
                f"CONTRACT: the fp32 model itself scores accuracy {self.used.accuracy:.3f} / validity "
                f"{self.used.validity:.3f} on the eval set under {self.used.name} (floors: validity "
                f"{VALIDITY_FLOOR}, accuracy {ACCURACY_FLOOR}): every artifact is judged against this weak baseline.")
        return said

    def as_dict(self) -> dict[str, Any]:
        return {"declared": self.declared.as_dict(), "used": self.used.as_dict(), "changed": self.changed,
                "below_floor": self.below_floor, "sample_rows": self.sample_rows,
                "candidates": [c.as_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContractCheck:
        return cls(Rendering.from_dict(data["declared"]), Rendering.from_dict(data["used"]),
                   [Rendering.from_dict(c) for c in data["candidates"]], data["sample_rows"])


def candidate_prompts(declared: PromptFormat, chat: PromptFormat | None) -> list[tuple[str, PromptFormat]]:
    """The declared rendering first, then each join inside the chat template (when there is one) and bare."""
    found = [(f"declared ({_describe(declared)})", declared)]
    wrappers = ([("chat template", chat.prefix, chat.suffix)] if chat else []) + [("no template", "", "")]
    for label, prefix, suffix in wrappers:
        for join in JOINS:
            prompt = PromptFormat(prefix=prefix, template=join, suffix=suffix,
                                  source="chat_template" if prefix or suffix else "plain")
            if all(prompt != p for _, p in found):
                found.append((f"{label}, {join!r}", prompt))
    return found


def _describe(prompt: PromptFormat) -> str:
    wrapper = "chat template" if prompt.source == "chat_template" else prompt.source
    return f"{wrapper}, {prompt.template!r}"


# Scores a prompt format on rows with the fp32 model: (accuracy, validity).
Scorer = Callable[[PromptFormat, Sequence[EvalRow]], TaskMetrics]


def check_contract(declared: Contract, chat: PromptFormat | None, rows: Sequence[EvalRow], scorer: Scorer,
                   template_declared: bool) -> ContractCheck:
    """Score the contract's rendering on the fp32 model and, when it is only a guess (no declared template) or
    falls below a floor, the usual renderings too; use a clearly better one (raise BadInputError with the
    table when the user declared the template it beats)."""
    sample = list(rows[:SAMPLE_ROWS])
    candidates = candidate_prompts(declared.prompt, chat)

    def scored(name: str, prompt: PromptFormat) -> Rendering:
        metrics = scorer(prompt, sample)
        return Rendering(name, prompt, metrics.exact_match, metrics.validity)

    first = scored(*candidates[0])
    check = ContractCheck(first, first, [], len(sample))
    if template_declared and not check.below_floor:
        return check
    check.candidates = [first, *(scored(name, prompt) for name, prompt in candidates[1:])]
    best = max(check.candidates, key=lambda r: (r.accuracy, r.validity))
    clearly_better = best.accuracy >= first.accuracy + 0.1 or best.validity >= first.validity + 0.1
    if clearly_better and template_declared:
        raise BadInputError(
            f"the declared prompt_template looks wrong for this model: the fp32 model answers {len(sample)} eval "
            f"rows with accuracy {first.accuracy:.3f} / validity {first.validity:.3f} under it, but "
            f"{best.accuracy:.3f} / {best.validity:.3f} under {best.name}. Renderings tried:\n{check.table()}\n"
            "Set prompt_template (edgepack.toml [contract] or --prompt-template) to the one the model was "
            "fine-tuned with, or drop it to let edgepack use the best one.")
    if clearly_better:
        check.used = best
    return check
