#!/usr/bin/env python3
"""Write targets/react_native/data/llama_rn_support.json: what the pinned llama.rn's bundled llama.cpp can load.

llama.rn ships its own copy of llama.cpp, older or newer than the one that verifies GGUFs on the
build host. The react-native target refuses a GGUF this copy would reject or mis-tokenize, so the
table is read from llama.rn's own sources, never written by hand:

  cpp/llama-arch.cpp   LLM_ARCH_NAMES            -> architectures (general.architecture)
  cpp/llama-vocab.cpp  tokenizer_model branches  -> tokenizer models, their vocab type, forced pre
                       BPE pre-tokenizer chain   -> pre_tokenizers (tokenizer.ggml.pre)
                       end-of-generation list    -> eog_token_texts (tokens that stop generation)
                       add_bos defaults/overrides -> add_bos (whether llama.cpp puts BOS before a prompt)
  src/version.ts       BUILD_NUMBER/BUILD_COMMIT -> the llama.cpp build, for messages

Usage: scripts/llama_rn_support.py LLAMA_RN_DIR [--output FILE] [--check]
(LLAMA_RN_DIR is an installed package, e.g. node_modules/llama.rn; npm install --ignore-scripts is
enough, since the sources are in the registry tarball.) --check compares instead of writing and
exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "targets" / "react_native" / "data" / "llama_rn_support.json"
# LLM_ARCH_NAMES entries that name no loadable model.
NOT_MODELS = {"LLM_ARCH_UNKNOWN", "LLM_ARCH_CLIP"}  # CLIP: "dummy, only used by llama-quantize"


class SourceLayoutError(RuntimeError):
    """llama.rn's sources no longer look the way this script reads them: update the script."""


def _section(text: str, start_marker: str, end_marker: str, where: str) -> str:
    """Return the text between two markers, failing loudly if either is missing."""
    start = text.find(start_marker)
    end = text.find(end_marker, start + len(start_marker)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise SourceLayoutError(f"{where}: could not find {start_marker!r} ... {end_marker!r}")
    return text[start + len(start_marker):end]


def _literals(pattern: str, text: str, where: str) -> list[str]:
    """Return the C++ string literals a pattern captures; escapes would need decoding, so refuse them."""
    found = re.findall(pattern, text)
    for literal in found:
        if "\\" in literal:
            raise SourceLayoutError(f"{where}: escaped string literal {literal!r}; decode it before use")
    return found


def architectures(arch_cpp: str) -> list[str]:
    body = _section(arch_cpp, "LLM_ARCH_NAMES = {", "\n};", "llama-arch.cpp LLM_ARCH_NAMES")
    entries = re.findall(r'\{\s*(LLM_ARCH_\w+)\s*,\s*"([^"\\]*)"\s*\}', body)
    return sorted({name for enum, name in entries if enum not in NOT_MODELS})


def tokenizer_models(vocab_cpp: str) -> dict[str, dict[str, Any]]:
    """Map each accepted tokenizer.ggml.model to its vocab type and the pre-tokenizer it forces, if any."""
    body = _section(vocab_cpp, "ml.get_key(LLM_KV_TOKENIZER_PRE", "// for now, only BPE models have pre-tokenizers",
                    "llama-vocab.cpp tokenizer_model branches")
    branch = re.compile(
        r'if \(((?:\s*(?:\|\|)?\s*tokenizer_model == "[^"]*")+)\s*\)\s*\{\s*type = LLAMA_VOCAB_TYPE_(\w+);'
    )
    matches = list(branch.finditer(body))
    models: dict[str, dict[str, Any]] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(body)
        forced = re.findall(r'\btokenizer_pre = "([^"\\]*)";', body[match.end():end])
        for name in _literals(r'tokenizer_model == "([^"]*)"', match.group(1), "tokenizer_model"):
            models[name] = {"vocab": match.group(2).lower(), "pre": forced[-1] if forced else None}
    return dict(sorted(models.items()))


def pre_tokenizers(vocab_cpp: str) -> list[str]:
    body = _section(vocab_cpp, "if (type == LLAMA_VOCAB_TYPE_BPE) {", "} else if (type == LLAMA_VOCAB_TYPE_SPM) {",
                    "llama-vocab.cpp BPE pre-tokenizer chain")
    return sorted(set(_literals(r'tokenizer_pre == "([^"]*)"', body, "tokenizer_pre")))


def _bpe_branches(vocab_cpp: str) -> list[tuple[list[str], str]]:
    """Return (pre-tokenizer names, branch body) for each branch of the BPE pre-tokenizer chain."""
    body = _section(vocab_cpp, "if (type == LLAMA_VOCAB_TYPE_BPE) {", "} else if (type == LLAMA_VOCAB_TYPE_SPM) {",
                    "llama-vocab.cpp BPE pre-tokenizer chain")
    branches = []
    for segment in re.split(r"\}\s*else if \(", body):
        condition, _, branch = segment.partition(") {")
        names = _literals(r'tokenizer_pre == "([^"]*)"', condition, "tokenizer_pre")
        if names:
            branches.append((names, branch))
    return branches


def bos_rules(vocab_cpp: str) -> dict[str, Any]:
    """Return how llama.cpp decides to add BOS, in the order it applies the rules.

    1. `default`, then per vocab type (`vocab`), then per BPE pre-tokenizer (`bpe_pre_true`);
    2. the GGUF's tokenizer.ggml.add_bos_token, when present, replaces that;
    3. for the pre-tokenizers in `forced_pre`, BOS is added whatever the GGUF says.
    """
    default = re.search(r"\bbool add_bos\s*=\s*(true|false);", vocab_cpp)
    if not default:
        raise SourceLayoutError("llama-vocab.cpp: the default of add_bos was not found")
    types = _section(vocab_cpp, "} else if (type == LLAMA_VOCAB_TYPE_SPM) {", "ml.get_key(LLM_KV_TOKENIZER_ADD_PREFIX",
                     "llama-vocab.cpp per-type defaults")
    vocab: dict[str, bool] = {}
    for segment in re.split(r"\}\s*else if \(", "type == LLAMA_VOCAB_TYPE_SPM) {" + types):
        kind = re.match(r"type == LLAMA_VOCAB_TYPE_(\w+)\)", segment)
        value = re.findall(r"\badd_bos = (true|false);", segment)
        if kind and value:
            vocab[kind.group(1).lower()] = value[-1] == "true"
    branches = _bpe_branches(vocab_cpp)
    enum_of = {name: enum for names, branch in branches
               for enum in re.findall(r"pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);", branch)[:1] for name in names}
    forced = set(re.findall(r"pre_type == LLAMA_VOCAB_PRE_TYPE_(\w+) && !add_bos\)\s*\{\s*add_bos = true;", vocab_cpp))
    return {
        "default": default.group(1) == "true",
        "vocab": dict(sorted(vocab.items())),
        "bpe_pre_true": sorted(name for names, branch in branches if re.search(r"\badd_bos = true;", branch)
                               for name in names),
        "forced_pre": sorted(name for name, enum in enum_of.items() if enum in forced),
    }


def eog_token_texts(vocab_cpp: str) -> list[str]:
    body = _section(vocab_cpp, "special_eog_ids.clear();", "special_eog_ids.insert(t.second);",
                    "llama-vocab.cpp end-of-generation list")
    return sorted(set(_literals(r't\.first == "([^"]*)"', body, "eog text")))


def support_table(llama_rn: Path) -> dict[str, Any]:
    """Return the support table of the llama.rn package installed at llama_rn."""
    package = json.loads((llama_rn / "package.json").read_text(encoding="utf-8"))
    if package.get("name") != "llama.rn":
        raise SourceLayoutError(f"{llama_rn}/package.json is not llama.rn's (name {package.get('name')!r})")
    version_ts = (llama_rn / "src" / "version.ts").read_text(encoding="utf-8")
    build = re.search(r"BUILD_NUMBER = '(\d+)'", version_ts)
    commit = re.search(r"BUILD_COMMIT = '([0-9a-f]+)'", version_ts)
    if not build or not commit:
        raise SourceLayoutError(f"{llama_rn}/src/version.ts: BUILD_NUMBER / BUILD_COMMIT not found")
    arch_cpp = (llama_rn / "cpp" / "llama-arch.cpp").read_text(encoding="utf-8")
    vocab_cpp = (llama_rn / "cpp" / "llama-vocab.cpp").read_text(encoding="utf-8")
    table = {
        "llama.rn": package["version"],
        "llama.cpp": {"build": f"b{build.group(1)}", "commit": commit.group(1)},
        "architectures": architectures(arch_cpp),
        "tokenizer_models": tokenizer_models(vocab_cpp),
        "pre_tokenizers": pre_tokenizers(vocab_cpp),
        "add_bos": bos_rules(vocab_cpp),
        "eog_token_texts": eog_token_texts(vocab_cpp),
    }
    # Names every supported llama.cpp has: their absence means the parsing broke, not the package.
    for key, must in (("architectures", "llama"), ("tokenizer_models", "gpt2"), ("pre_tokenizers", "llama-bpe"),
                      ("eog_token_texts", "<|eot_id|>")):
        if must not in table[key]:
            raise SourceLayoutError(f"{llama_rn}: {must!r} missing from {key}; the source layout changed")
    if "spm" not in table["add_bos"]["vocab"]:
        raise SourceLayoutError(f"{llama_rn}: the per-vocab add_bos defaults were not found; the source layout changed")
    return table


def render(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("llama_rn", type=Path, help="installed llama.rn package, e.g. node_modules/llama.rn")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = parser.parse_args(argv)
    try:
        text = render(support_table(args.llama_rn))
    except (OSError, SourceLayoutError) as exc:
        print(f"llama_rn_support: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            print(f"llama_rn_support: {args.output} is out of date; run {Path(__file__).name} {args.llama_rn}",
                  file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
