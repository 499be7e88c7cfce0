"""The task contract: how a prompt is rendered and when generation stops, one truth for all targets.

Captured once from the checkpoint (chat template, BOS handling, eos/end-of-turn ids, generation
defaults) and written into every target's edgepack.json, so each runtime and each mobile bridge
renders prompts and stops exactly alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packager.checkpoint import Checkpoint


@dataclass
class Contract:
    """What a caller needs to drive the model the way it was fine-tuned."""

    task: str = "text"
    add_bos: bool = True
    bos_id: int | None = None
    bos_token: str | None = None
    eos_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    chat_template: str | None = None
    prompt_template: str | None = None
    max_new_tokens: int = 128
    generation: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json(path: Path) -> dict[str, Any]:
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except json.JSONDecodeError:
            return {}
    return {}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _chat_template(folder: Path, tok_cfg: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_cfg.get("chat_template") or _json(folder / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None


def contract_from_checkpoint(ckpt: Checkpoint) -> Contract:
    """Read the contract the checkpoint itself declares (tokenizer + generation config)."""
    folder = ckpt.folder
    tokenizer_json = _json(folder / "tokenizer.json")
    tok_cfg = _json(folder / "tokenizer_config.json")
    gen_cfg = _json(folder / "generation_config.json")
    vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}

    def token_id(text: str | None) -> int | None:
        if not text:
            return None
        return added.get(text, vocab.get(text) if isinstance(vocab, dict) else None)

    bos_token = tok_cfg.get("bos_token") if isinstance(tok_cfg.get("bos_token"), str) else None
    bos_id = token_id(bos_token)
    if bos_id is None:
        bos_id = ckpt.config.get("bos_token_id")
    post = tokenizer_json.get("post_processor") or {}
    single = json.dumps(post.get("single", [])) + json.dumps(post.get("processors", []))
    add_bos = bool(tok_cfg.get("add_bos_token", bos_token is not None and bos_token in single))

    eos_ids: list[int] = []
    for source in (gen_cfg.get("eos_token_id"), ckpt.config.get("eos_token_id")):
        for i in _ids(source):
            if i not in eos_ids:
                eos_ids.append(i)
    stop_strings = []
    for text in ckpt.spec.end_of_turn_tokens:
        i = token_id(text)
        if i is not None:
            stop_strings.append(text)
            if i not in eos_ids:
                eos_ids.append(i)

    generation = {k: gen_cfg[k] for k in ("temperature", "top_k", "top_p", "do_sample") if k in gen_cfg}
    return Contract(
        add_bos=add_bos,
        bos_id=bos_id,
        bos_token=bos_token,
        eos_ids=eos_ids,
        stop_strings=stop_strings,
        chat_template=_chat_template(folder, tok_cfg),
        generation=generation,
    )
