"""Generate the intent dataset: 12 intents of a customer-support app, messy mobile inputs.

Deterministic (fixed seed): running it again reproduces data/train.jsonl and data/eval.jsonl
byte for byte. Rows use the seeds' format: {"instruction", "input", "output"}.

The eval split holds phrasings whose *templates* never appear in training (held out per intent),
so a model cannot pass it by memorising sentences.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Classify the customer message into one intent."

# intent -> phrasings; {item} / {n} / {when} are filled from the pools below.
INTENTS: dict[str, list[str]] = {
    "track_order": [
        "where is my order", "wheres my package", "my order {n} hasnt arrived yet", "track order {n}",
        "when will my {item} arrive", "is my parcel on the way", "order status pls", "how long til my {item} ships",
        "delivery still not here {when}", "can u check where my stuff is", "tracking number for order {n}?",
        "my {item} was supposed to come {when}", "has order {n} shipped", "package stuck in transit??",
        "any update on my delivery", "the courier hasnt shown up", "need the eta for order {n}",
        "tracking page shows nothing",
    ],
    "cancel_order": [
        "cancel my order", "i want to cancel order {n}", "pls cancel the {item} i just bought",
        "stop my order before it ships", "changed my mind cancel it", "cancel order {n} asap",
        "dont want the {item} anymore, cancel", "how do i cancel an order", "accidentally ordered twice cancel one",
        "cancel everything from {when}", "can i still cancel order {n}", "undo my purchase of the {item}",
        "kill that order pls", "i need to cancel before shipping",
        "scrap my last order", "abort order {n}",
        "call off the {item} order", "void my purchase from {when}",
    ],
    "refund_request": [
        "i want a refund", "refund for order {n}", "the {item} arrived broken, money back pls",
        "how do i get my money back", "return the {item} and refund me", "still waiting on my refund from {when}",
        "refund hasnt shown up", "item was wrong i want refund", "can i return the {item}",
        "send me a return label for order {n}", "money back for the damaged {item}", "where is my refund??",
        "charged but never got it, refund", "return policy for the {item}?",
        "reimburse me for order {n}", "credit my card back",
        "i returned the {item} where is my money", "want a full refund not store credit",
    ],
    "change_address": [
        "change my shipping address", "wrong address on order {n}", "i moved, update my address",
        "ship the {item} to my work instead", "update delivery address pls", "can u change the addr for order {n}",
        "new address for my deliveries", "typo in my street name", "send it to a different address",
        "my zip code is wrong on order {n}", "change where my package goes", "deliver to my mom's place instead",
        "edit address before it ships", "address changed {when}",
        "fix the apartment number on order {n}",
        "reroute my parcel", "wrong house number", "deliver order {n} to a new place",
    ],
    "payment_failed": [
        "my card got declined", "payment failed at checkout", "why was my card rejected",
        "cant pay for the {item}", "transaction keeps failing", "card declined twice pls fix",
        "checkout error when paying", "paypal payment didnt go thru", "it says payment unsuccessful",
        "charged but order failed", "my payment wont process {when}", "error code at payment step",
        "bank says ok but ur site says declined", "payment stuck on processing",
        "visa keeps getting refused", "cant complete purchase card error",
        "my transaction was denied {when}", "why does checkout reject my card",
    ],
    "update_payment": [
        "update my credit card", "change payment method", "add a new card", "remove my old card",
        "my card expired, how do i update", "switch to paypal for payments", "set a different default card",
        "update billing info", "new debit card need to add it", "delete saved card ending {n}",
        "change the card on my subscription", "use apple pay instead", "how to edit payment details",
        "replace the card on file",
        "swap my saved card for a new one", "remove the visa from my wallet",
        "my bank issued a new card", "add paypal as payment option",
    ],
    "reset_password": [
        "forgot my password", "reset password pls", "cant log in", "locked out of my account",
        "password reset email never came", "how do i change my pw", "login not working {when}",
        "i dont remember my password", "send me a reset link", "account locked after too many tries",
        "new password isnt working", "cant sign in on the app", "reset my login", "pw reset link expired",
        "2fa code never arrives cant get in", "need a new password", "my login keeps saying wrong password",
        "recover my account access",
    ],
    "delete_account": [
        "delete my account", "close my account permanently", "i want to remove all my data",
        "how do i deactivate my profile", "erase my account pls", "unsubscribe and delete everything",
        "gdpr delete my info", "remove me from ur system", "terminate my account", "i want my account gone",
        "delete profile and history", "how to delete account on the app", "wipe my data",
        "cancel my membership and delete account",
        "shut down my profile for good", "remove my account and personal info",
        "i want to leave and erase everything", "permanently delete me",
    ],
    "change_plan": [
        "upgrade my plan", "switch to the premium plan", "downgrade my subscription", "change to yearly billing",
        "what plans do u have, want to upgrade", "move me to the basic tier", "cancel premium keep free plan",
        "upgrade to family plan", "change subscription plan", "switch from monthly to annual",
        "i want a cheaper plan", "how much to upgrade", "pause my subscription", "go back to the old plan",
        "bump me up to pro", "drop to the free tier", "switch my plan to the team one",
        "change my membership level",
    ],
    "stock_check": [
        "is the {item} in stock", "when will the {item} be back", "do u have the {item} in size m",
        "any {item} available", "out of stock again?", "restock date for the {item}",
        "is the blue {item} available", "can i preorder the {item}", "notify me when {item} is back",
        "how many {item} left", "{item} sold out??", "do you still sell the {item}",
        "check availability of the {item}", "is the {item} available near me",
        "got any {item} in black", "will you restock the {item}", "{item} shows unavailable",
        "can i still buy the {item}",
    ],
    "promo_code": [
        "my promo code doesnt work", "how do i use a discount code", "coupon not applying",
        "code SAVE10 invalid??", "where do i enter a promo code", "forgot to add my coupon to order {n}",
        "any discounts right now", "voucher expired {when}?", "student discount code pls",
        "promo says not eligible", "apply my gift card", "discount didnt show at checkout",
        "referral code not working", "can i stack two coupons",
        "discount code rejected", "is there a coupon for the {item}",
        "my voucher wont apply to order {n}", "promo expired too soon",
    ],
    "human_agent": [
        "talk to a human", "i want a real person", "connect me to an agent", "customer service pls",
        "can i speak to someone", "live chat with staff", "agent now", "stop the bot i need help",
        "call me back pls", "need a representative", "this bot is useless get me a person", "human pls",
        "who can i talk to", "escalate this to a manager",
        "put me through to support staff", "i need an actual human",
        "let me chat with an employee", "transfer me to a rep",
    ],
}

ITEMS = ["shoes", "hoodie", "headphones", "phone case", "charger", "jacket", "backpack", "watch", "lamp", "mug"]
WHENS = ["yesterday", "last week", "on monday", "2 days ago", "today", "this morning"]
ABBREVIATIONS = {"you": "u", "please": "pls", "your": "ur", "thanks": "thx", "with": "w/", "before": "b4",
                 "tomorrow": "tmrw", "because": "bc", "message": "msg", "order": "ordr"}
PREFIXES = ["", "", "", "hi ", "hey ", "hello, ", "ugh ", "ok so ", "quick q: ", "yo "]
SUFFIXES = ["", "", "", "?", "!!", " thx", " asap", " 🙏", " :(", " pls help", "..."]


def _typo(word: str, rng: random.Random) -> str:
    """One keyboard slip: swap, drop or double a letter."""
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def messy(text: str, rng: random.Random) -> str:
    """Make a phrasing look typed on a phone: abbreviations, typos, case, filler, emoji."""
    words = [ABBREVIATIONS.get(w, w) if rng.random() < 0.5 else w for w in text.split(" ")]
    words = [_typo(w, rng) if rng.random() < 0.12 else w for w in words]
    out = " ".join(words)
    if rng.random() < 0.2:
        out = out.capitalize()
    if rng.random() < 0.08:
        out = out.upper()
    return rng.choice(PREFIXES) + out + rng.choice(SUFFIXES)


def fill(template: str, rng: random.Random) -> str:
    return template.format(item=rng.choice(ITEMS), n=rng.randrange(10000, 99999), when=rng.choice(WHENS))


def build(seed: int = 270, per_template: int = 4, held_out: int = 3) -> tuple[list[dict], list[dict]]:
    """Return (train, eval): the last `held_out` phrasings of each intent only appear in eval."""
    rng = random.Random(seed)
    train: list[dict] = []
    evaluation: list[dict] = []
    for intent, templates in INTENTS.items():
        shuffled = templates[:]
        rng.shuffle(shuffled)
        train_templates, eval_templates = shuffled[:-held_out], shuffled[-held_out:]
        for t in train_templates:
            for _ in range(per_template):
                train.append({"instruction": INSTRUCTION, "input": messy(fill(t, rng), rng), "output": intent})
        for t in eval_templates:
            for _ in range(per_template - 1):
                evaluation.append({"instruction": INSTRUCTION, "input": messy(fill(t, rng), rng), "output": intent})
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation


def main() -> None:
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    train, evaluation = build()
    for name, rows in (("train", train), ("eval", evaluation)):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"train {len(train)} rows, eval {len(evaluation)} rows -> {out}")


if __name__ == "__main__":
    main()
