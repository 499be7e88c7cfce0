"""Generate the extractor's dataset: messy support messages -> {"order_id", "amount", "date"} as JSON.

Deterministic (fixed seed): running it again reproduces data/train.jsonl and data/eval.jsonl byte
for byte. Rows use the seeds' format: {"instruction", "input", "output"}; the output is one line of
JSON with the three keys in this order, null where the message does not say. Dates are written
the way people type them on a phone ("march 14", "14/3", "3rd of may") and normalised to
YYYY-MM-DD in 2026; amounts to a number.

The eval split uses sentence templates that never appear in training, so a model cannot pass it
by memorising sentences.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Extract the order id, amount and date from the message as JSON."
YEAR = 2026
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
DAYS_IN = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

# {order}, {amount}, {date}: each template says which fields it carries.
TEMPLATES = [
    "hi my order {order} was charged {amount} on {date} and never came",
    "refund {amount} for {order} pls",
    "charged twice for order {order}!!",
    "i paid {amount} on {date} but got nothing",
    "where is {order}",
    "order {order} placed {date} still not shipped",
    "u took {amount} from my card {date} why",
    "cancel {order} i was billed {amount}",
    "my package from {date} is missing",
    "need receipt for {order}, total was {amount}",
    "wrong item in {order}",
    "got charged {amount} for nothing??",
    "ordered on {date}, order {order}, paid {amount}, still waiting",
    "hey can u check {order} from {date}",
    "double charge {amount} {date}",
    "pls help, {order} arrived broken",
    "the {amount} payment on {date} failed but money is gone",
    "{order} - refund of {amount} not received yet",
    "still waiting on delivery since {date}",
    "why was i charged {amount}",
    "order no {order} amount {amount} date {date}",
    "hello i need help with my account",
    "change address for {order} pls",
    "promo code didnt apply, paid {amount} on {date}",
    "{date}: bought stuff for {amount}, order {order}, never arrived",
    "item missing from {order} ordered {date}",
    "refund me {amount} asap",
    "tracking for {order} says delivered {date} but nothing here",
    "i want my {amount} back",
    "billing issue w order {order}",
    "card charged {amount} twice on {date} for {order}",
    "app crashed when i paid {amount}",
    "returned {order} on {date}, where is my money",
    "paid {amount} for express shipping, {order} late",
    "no confirmation email for order placed {date}",
    "hi, order {order}, can i still cancel",
    "was billed {amount} on {date} after cancelling",
    "my refund of {amount} for {order} from {date} is missing",
    "package {order} damaged",
    "subscription renewed {date} for {amount}, didnt want it",
]
EVAL_TEMPLATES = [
    "yo {order} never showed up, paid {amount}",
    "charged {amount} {date} no idea what for",
    "help!! order {order} from {date}",
    "can i get a refund on {order}",
    "bought something {date} for {amount} and its broken",
    "{amount} was taken on {date} for order {order} that i cancelled",
    "how do i reset my password",
    "my {order} shows {amount} but i paid less",
    "nothing arrived since {date}",
    "need invoice: order {order}, {amount}, {date}",
    "extra charge of {amount} on my statement",
    "ref order {order} placed {date}",
]

ORDER_FORMATS = ["#{n}", "order {n}", "ord {n}", "{n}", "no. {n}", "order #{n}", "ORDER {n}"]
AMOUNT_FORMATS = ["${v}", "{v} dollars", "usd {v}", "{v}$", "$ {v}", "{v} bucks", "USD{v}"]


def _order(rng: random.Random) -> tuple[str, str]:
    n = str(rng.randint(1000, 999999))
    text = rng.choice(ORDER_FORMATS).format(n=n)
    # "order {order}" templates should not read "order order 123": strip a leading word the template has.
    return n, text


def _amount(rng: random.Random) -> tuple[float, str]:
    cents = rng.choice([0, 0, 50, 99, rng.randint(1, 99)])
    value = rng.randint(1, 499) + cents / 100
    shown = f"{value:.2f}" if cents or rng.random() < 0.5 else f"{int(value)}"
    return round(value, 2), rng.choice(AMOUNT_FORMATS).format(v=shown)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date(rng: random.Random) -> tuple[str, str]:
    month = rng.randint(1, 12)
    day = rng.randint(1, DAYS_IN[month - 1])
    name = MONTHS[month - 1]
    short = name[:3]
    text = rng.choice([
        f"{name} {day}", f"{short} {day}", f"{day} {name}", f"{_ordinal(day)} of {name}", f"{short} {_ordinal(day)}",
        f"{day}/{month}", f"{YEAR}-{month:02d}-{day:02d}", f"{name.capitalize()} {day}",
    ])
    return f"{YEAR}-{month:02d}-{day:02d}", text


def _row(rng: random.Random, template: str) -> dict[str, str]:
    fields: dict[str, object] = {"order_id": None, "amount": None, "date": None}
    values = {}
    if "{order}" in template:
        fields["order_id"], text = _order(rng)
        if "order {order}" in template or "order no {order}" in template:
            text = fields["order_id"]  # the template already says "order"
        values["order"] = text
    if "{amount}" in template:
        fields["amount"], values["amount"] = _amount(rng)
    if "{date}" in template:
        fields["date"], values["date"] = _date(rng)
    message = template.format(**values)
    if rng.random() < 0.25:
        message = message.upper() if rng.random() < 0.3 else message.capitalize()
    return {"instruction": INSTRUCTION, "input": message, "output": json.dumps(fields)}


def main() -> None:
    rng = random.Random(2026)
    here = Path(__file__).resolve().parent
    train = [_row(rng, rng.choice(TEMPLATES)) for _ in range(640)]
    evaluation = [_row(rng, template) for template in EVAL_TEMPLATES for _ in range(10)]
    for name, rows in (("train", train), ("eval", evaluation)):
        path = here / "data" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()
