"""What each target of a build will need in memory, known before the build starts.

A target's build can run one heavy step at a time (an fp32 model, a screen, a conversion child) beside
this process's own memory, so what it needs is this process's base plus its largest step. (Work it starts
beside its own steps, packager.beside, waits for its memory like any step: it runs at once only when the
budget has room for both.) A step's size
is what this machine measured for that kind of step before (packager.scheduler.MeasuredCosts, as
a multiple of the checkpoint's fp32 size), else the estimate the step declares. `edgepack doctor`
shows these numbers; a build checks them first and stops at once, writing nothing, when a target
cannot fit: under an explicit --max-ram when its need is larger, under the default budget when a
measured need is larger than the whole machine, or an estimate is more than ESTIMATE_MARGIN times it
(an estimate a little above the machine is tried: estimates are within about 25 % of what builds
measured, docs/benchmarks.md, and a step that overruns is reported as out of memory, exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from packager.errors import UnsupportedError
from packager.ladder import EAGER_SCREEN
from packager.scheduler import GB, HeavyStep, Scheduler, host_memory
from packager.target import heavy_steps

if TYPE_CHECKING:
    from packager.stages import BuildContext
    from packager.target import Target


# An estimate this many times the machine's memory is refused without trying: no estimate is that far off
# (a Gemma 3 4B's conversions and screens are estimated at 36-38 GB on a 23.5 GB machine).
ESTIMATE_MARGIN = 1.5


@dataclass(frozen=True)
class StepNeed:
    """One heavy step's expected peak in bytes, and whether that is a measurement or an estimate."""

    kind: str
    bytes: int
    measured: bool


@dataclass(frozen=True)
class TargetNeed:
    """A target's expected peak: this process's base plus its largest step."""

    target: str
    base: int
    largest: StepNeed

    @property
    def peak(self) -> int:
        return self.base + self.largest.bytes

    def describe(self) -> str:
        source = "measured on this machine" if self.largest.measured else "estimated"
        return (f"{self.target}: about {self.peak / GB:.1f} GB (its {self.largest.kind}, {source}: "
                f"{self.largest.bytes / GB:.1f} GB, plus {self.base / GB:.1f} GB this process holds)")


def step_need(scheduler: Scheduler, step: HeavyStep) -> StepNeed:
    step = step.at_scale(scheduler.scale)
    return StepNeed(step.kind, scheduler.expected(step.kind, step.estimate, step.fixed),
                    scheduler.learned_ratio(step.kind) is not None)


def target_needs(ctx: BuildContext, targets: list[Target]) -> list[TargetNeed]:
    """Each target's expected peak for this checkpoint and these options (without the screens of the targets
    whose screens are skipped, ctx.scheduler.unscreened)."""
    shared = ctx.fp32_steps
    needs = []
    for target in targets:
        values = ctx.options.for_target(target)
        screens = target.name not in ctx.scheduler.unscreened
        steps = [step_need(ctx.scheduler, s) for s in (*shared, *heavy_steps(target))
                 if s.runs_with(values.get, ctx.options.no_gate) and (screens or not s.gated)]
        needs.append(TargetNeed(target.name, ctx.scheduler.base, max(steps, key=lambda s: s.bytes)))
    return needs


def screens_to_skip(ctx: BuildContext, targets: list[Target]) -> dict[str, str]:
    """The targets whose largest step is a ladder screen that does not fit, and why: they walk their ladders
    without screens, each rung converted and verified in turn (slower, but a conversion child's memory is a
    fraction of a screen's, which holds the fp32 model and its quantized copy in this process: a Gemma 3 4B's
    screens were estimated at 36 GB where its conversions and simulations measured 13 GB). Set them in
    ctx.scheduler.unscreened before the memory check."""
    limit = ctx.scheduler.limit if ctx.scheduler.explicit else host_memory()
    return {need.target: (f"its ladder's eager screens would need about {need.peak / GB:.1f} GB of "
                          f"{limit / GB:.1f} GB, so each rung is converted and verified in turn, smallest first, "
                          "without a screen (slower: a conversion per rung tried)")
            for need in target_needs(ctx, targets)
            if need.peak > limit and need.largest.kind.startswith(EAGER_SCREEN.kind)}


def check_fits(needs: list[TargetNeed], scheduler: Scheduler) -> list[str]:
    """Raise UnsupportedError (exit 3) for targets that cannot fit; return warnings for those that may not."""
    limit = scheduler.limit if scheduler.explicit else host_memory()
    refused = [n for n in needs if n.peak > limit and (scheduler.explicit or n.largest.measured
                                                        or n.peak > ESTIMATE_MARGIN * limit)]
    if refused:
        where = (f"the {limit / GB:.1f} GB --max-ram allows" if scheduler.explicit
                 else f"this machine's {limit / GB:.1f} GB")
        raise UnsupportedError(
            f"not enough memory: {'; '.join(n.describe() for n in refused)} — more than {where}. Nothing was "
            f"built. Leave out {', '.join('--target ' + n.target for n in refused)}, lower --context-length, "
            f"{'raise --max-ram, ' if scheduler.explicit else ''}or build on a machine with more memory "
            "(`edgepack doctor CHECKPOINT` shows each target's need).")
    return [f"{n.describe()} may not fit in {limit / GB:.1f} GB; the build will try"
            for n in needs if n.peak > limit]
