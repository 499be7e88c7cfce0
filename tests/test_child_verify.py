"""A verification run in a child process gets the same inputs, gate and verdict the build has."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from packager.contract import Contract, PromptFormat
from packager.errors import InternalError
from packager.verify.child_verify import VerifyInputs, verify_in_child
from packager.verify.gates import EIGHT_BIT, LOW_BIT, Gate, TopOneGate, gate_as_dict, gate_from_dict
from packager.verify.golden import load_golden
from packager.verify.metrics import FidelityMetrics
from packager.verify.reference import ReferenceLogits
from packager.verify.task_eval import EvalRow


def _metrics(top1: float, kl: float) -> FidelityMetrics:
    return FidelityMetrics(positions=100, top1=top1, top1_decisive=top1, decisive_positions=90, kl=kl, cosine=0.99,
                           ppl=None, ppl_ref=None, nonfinite_positions=0)


@pytest.mark.parametrize("gate", [EIGHT_BIT, TopOneGate("Q4_K_M-relative", 0.91), TopOneGate("rel", 0.9, LOW_BIT)])
def test_a_gate_comes_back_from_json_as_the_same_gate(gate: Gate | TopOneGate) -> None:
    again = gate_from_dict(json.loads(json.dumps(gate_as_dict(gate))))
    assert again == gate and type(again) is type(gate)
    for m in (_metrics(0.95, 0.01), _metrics(0.85, 0.08), _metrics(math.nan, 0.01)):
        assert again.check(m) == gate.check(m)


def test_verify_inputs_survive_json(tmp_path: Path) -> None:
    reference = ReferenceLogits(tmp_path / "ref", [[2, 5, 7], [2, 9]], [2, 5], [7, 1], [1, 106])
    contract = Contract(task="labels", labels=["a", "b"], prompt=PromptFormat(template="{input} ->"), bos_id=2,
                        eos_ids=[1, 106], stop_strings=["\n"], constrained=True)
    inputs = VerifyInputs(reference, load_golden(), contract, tmp_path / "ckpt",
                          [EvalRow("classify", "hi", "a"), EvalRow("", "yo", "b")], ["a", "a"])
    again = VerifyInputs.from_dict(json.loads(json.dumps(inputs.as_dict())))
    assert again == inputs


def test_a_child_that_fails_names_what_it_ran_and_quotes_its_log(tmp_path: Path) -> None:
    reference = ReferenceLogits(tmp_path / "ref", [[2, 5]], [2], [5], [1])
    inputs = VerifyInputs(reference, load_golden(), Contract(), tmp_path / "no-checkpoint-here", [], [])
    missing = tmp_path / "missing.mlpackage"
    request = {"package": str(missing), "artifact": "ios/x.mlpackage", "quant": "none", "gate": gate_as_dict(EIGHT_BIT),
               "inputs": inputs.as_dict(), "max_context": 64, "sliding": False, "max_positions": None,
               "executed": False}
    with pytest.raises(InternalError) as err:
        verify_in_child("targets.ios.verify", request, "the simulation of ios/x.mlpackage")
    text = str(err.value)
    assert "the simulation of ios/x.mlpackage failed" in text and "no-checkpoint-here" in text
