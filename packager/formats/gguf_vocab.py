"""The tokenizer half of a GGUF file: vocabulary, token types, merges, special ids, pre-tokenizer.

llama.cpp picks its pre-tokenizer from the `tokenizer.ggml.pre` name; a wrong name tokenizes
differently without any error. We choose the name from two tables (the same probe-text hash
llama.cpp's converter uses, then the tokenizer.json structure) and the build re-checks the result
by tokenizing a probe text with both HF and llama.cpp.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from packager.errors import UnsupportedError

# llama.cpp's probe text for identifying BPE pre-tokenizers (convert_hf_to_gguf_update.py).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# Hash of the token ids of CHKTXT -> llama.cpp pre-tokenizer, for the tokenizer families we support.
PRE_TOKENIZER_BY_HASH: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    # Gemma 3's tokenizer.json (SPM-style BPE on raw UTF-8); llama.cpp also knows it as
    # "granite-embed-multi-311m", which maps to the same pre-tokenizer type.
    "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669": "gemma4",
}

# Pre-tokenizer regexes (as written in tokenizer.json) -> llama.cpp name, for tokenizers whose
# vocabulary differs from the published model (e.g. trained for a test) but whose rules match.
_LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
PRE_TOKENIZER_BY_REGEX: dict[str, str] = {_LLAMA3_REGEX: "llama-bpe"}

# A byte-fallback token's spelling (Gemma's <0xC3>): it stands for one raw byte.
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class Vocab:
    """Everything the GGUF tokenizer section holds, ready to add to a writer."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    folder: Path

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        # Special ids, add_bos/eos and the chat template, read the way llama.cpp's converter reads them;
        # merges come from our single parse of tokenizer.json instead of a second one.
        gguf.SpecialVocab(self.folder, load_merges=False).add_to_gguf(writer, quiet=True)


def read_tokenizer_json(folder: Path) -> dict[str, Any]:
    """Parse tokenizer.json once per build (it is 33 MB for Gemma's 262k vocabulary)."""
    return _parse_tokenizer_json(str(folder / "tokenizer.json"), (folder / "tokenizer.json").stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _parse_tokenizer_json(path: str, mtime_ns: int) -> dict[str, Any]:
    del mtime_ns  # part of the cache key only
    return json.loads(Path(path).read_text(encoding="utf-8"))


def tokenizer_rows(tokenizer_json: dict[str, Any]) -> int:
    """Rows llama.cpp's converter keeps in Gemma's embedding: vocab + added tokens (as it counts them)."""
    return len(tokenizer_json["model"]["vocab"]) + len(tokenizer_json.get("added_tokens", []))


def _merges(tokenizer_json: dict[str, Any]) -> list[str]:
    merges = tokenizer_json["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _structural_pre(tokenizer_json: dict[str, Any]) -> str | None:
    """Recognise a pre-tokenizer family from tokenizer.json's own rules."""
    normalizer = tokenizer_json.get("normalizer") or {}
    model = tokenizer_json.get("model") or {}
    if (
        normalizer.get("type") == "Replace"
        and normalizer.get("pattern", {}).get("String") == " "
        and normalizer.get("content") == "\u2581"
        and model.get("type") == "BPE"
        and model.get("byte_fallback")
    ):
        return "gemma4"
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for part in parts:
        regex = (part.get("pattern") or {}).get("Regex")
        if part.get("type") == "Split" and regex in PRE_TOKENIZER_BY_REGEX:
            return PRE_TOKENIZER_BY_REGEX[regex]
    types = [p.get("type") for p in parts]
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    return None


def _does_token_look_special(text: str) -> bool:
    # Same heuristics as llama.cpp's converter: some models mark control tokens as not special.
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def build_vocab(folder: Path, vocab_size: int) -> Vocab:
    """Read the HF tokenizer in `folder` and return the GGUF vocabulary (gpt2-style BPE with merges)."""
    from tokenizers import Tokenizer

    tokenizer_json = read_tokenizer_json(folder)
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise UnsupportedError(
            f"{folder / 'tokenizer.json'}: tokenizer model {tokenizer_json.get('model', {}).get('type')!r}; "
            "edgepack writes BPE tokenizers to GGUF (Gemma 3, Llama 3, SmolLM2 use BPE)."
        )
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    chkhsh = sha256(str(tokenizer.encode(CHKTXT).ids).encode()).hexdigest()
    pre = PRE_TOKENIZER_BY_HASH.get(chkhsh) or _structural_pre(tokenizer_json)
    if pre is None:
        raise UnsupportedError(
            f"{folder / 'tokenizer.json'}: edgepack does not recognise this tokenizer's pre-tokenizer "
            f"(probe hash {chkhsh[:16]}…), and a wrong guess would tokenize differently in llama.cpp "
            f"without any error. Known families: {', '.join(sorted(set(PRE_TOKENIZER_BY_HASH.values())))}."
        )

    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedError(
            f"{folder / 'tokenizer.json'}: token id {max(vocab.values())} is outside the model's "
            f"vocab_size {vocab_size} (config.json). The tokenizer does not belong to this model."
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_tokens_decoder()
    byte_fallback = bool(tokenizer_json["model"].get("byte_fallback"))
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            if not added[i].normalized:
                # llama.cpp assumes control/user tokens are pre-normalized.
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False).ids,
                                         skip_special_tokens=False)
            if added[i].special or _does_token_look_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        elif byte_fallback and _BYTE_TOKEN.fullmatch(token):
            # Typed NORMAL, llama.cpp renders the six characters "<0xC3>" (naïve came out as
            # "na<0xC3><0xAF>ve") and its grammar cannot spell a label with such a character.
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return Vocab(model="gpt2", pre=pre, tokens=tokens, token_types=types, merges=_merges(tokenizer_json),
                 folder=folder)
