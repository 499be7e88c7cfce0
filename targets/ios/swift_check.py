"""Checking generated Swift without a Swift compiler: tree-sitter syntax, and a closed list of API names.

No Swift toolchain or Xcode exists on a Linux build host. Two checks stand in for the compiler:

- every .swift file must parse without an error node in tree-sitter's Swift grammar (bundled by
  tree-sitter-language-pack 0.13.0);
- every name the code uses must be declared in the checked sources themselves, or appear in
  targets/ios/data/ios-api.json: the Core ML, swift-transformers, Foundation Models and Core AI
  language-model members taken from their documentation (calls with their argument labels, e.g.
  `prediction(from:using:)`), plus the Swift, Foundation and SwiftUI names the bridge and app use. A
  misspelt or invented API member fails. Code under `#if canImport(...)` is checked like the rest: the
  Core AI path is checked though it compiles only where the app links Apple's CoreAILM.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packager.codecheck import tree_sitter_errors
from packager.target import ScaffoldCheck

API_LIST = Path(__file__).resolve().parent / "data" / "ios-api.json"
_DECLARATIONS = {"function_declaration", "class_declaration", "protocol_declaration", "typealias_declaration",
                 "enum_entry", "parameter", "property_declaration", "protocol_property_declaration",
                 "protocol_function_declaration", "init_declaration", "pattern", "lambda_parameter",
                 "tuple_expression", "enum_class_body", "inheritance_specifier"}


@dataclass(frozen=True)
class ApiList:
    """Checked names: API signatures by framework, their base names, and the plain allowed names."""

    signatures: dict[str, str]  # signature or member -> framework
    allowed: frozenset[str]

    @property
    def call_bases(self) -> frozenset[str]:
        return frozenset(s.split("(", 1)[0] for s in self.signatures if "(" in s)

    def known(self, name: str) -> bool:
        return name in self.allowed or name in self.signatures or name in self.call_bases


@cache
def api_list(path: Path = API_LIST) -> ApiList:
    data = json.loads(path.read_text(encoding="utf-8"))
    signatures = {name: framework for framework, entry in data["apis"].items() for name in entry["names"]}
    return ApiList(signatures, frozenset(data["swift"]))


def _parser():
    from tree_sitter_language_pack import get_parser

    return get_parser("swift")


def syntax_errors(text: str) -> list[str]:
    """Return 'line N: ...' for every syntax error tree-sitter's Swift grammar finds (empty: it parses)."""
    return tree_sitter_errors(text, "swift")


def _text(node) -> str:
    return node.text.decode("utf-8")


def _nodes(root):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def declared_names(texts: Iterable[str]) -> set[str]:
    """Every name the sources declare (types, functions, properties, parameters, cases, bindings)."""
    names: set[str] = set()
    for text in texts:
        for node in _nodes(_parser().parse(text.encode("utf-8")).root_node):
            if node.type == "parameter":  # the internal name only: an argument label declares nothing
                name = node.child_by_field_name("name")
                if name is not None:
                    names.add(_text(name))
            elif node.type in _DECLARATIONS:
                for child in node.children:
                    if child.type in ("simple_identifier", "type_identifier"):
                        names.add(_text(child))
                for field in ("name", "bound_identifier"):
                    target = node.child_by_field_name(field)
                    if target is not None and target.type in ("simple_identifier", "type_identifier"):
                        names.add(_text(target))
            if node.type == "type_identifier" and node.parent is not None and node.parent.type in (
                    "class_declaration", "protocol_declaration"):
                names.add(_text(node))
    return names


def _call_signature(call) -> tuple[str, str] | None:
    """(base name, base(label:label:)) of a call expression, or None for a call on an expression."""
    callee = call.children[0]
    if callee.type == "navigation_expression":
        suffix = callee.child_by_field_name("suffix")
        name_node = suffix.child_by_field_name("suffix") if suffix is not None else None
    elif callee.type == "simple_identifier":
        name_node = callee
    else:
        return None
    if name_node is None:
        return None
    labels = []
    suffix_node = next((c for c in call.children if c.type == "call_suffix"), None)
    arguments = next((c for c in suffix_node.children if c.type == "value_arguments"), None) if suffix_node else None
    for argument in arguments.children if arguments is not None else []:
        if argument.type != "value_argument":
            continue
        label = argument.child_by_field_name("name")
        labels.append((_text(label).rstrip(":").strip() if label is not None else "_") + ":")
    base = _text(name_node)
    return base, f"{base}({''.join(labels)})"


def used_names(text: str) -> tuple[set[str], set[str], set[str]]:
    """(member names after a dot, call signatures, type names) used in one Swift source."""
    members: set[str] = set()
    calls: set[str] = set()
    types: set[str] = set()
    for node in _nodes(_parser().parse(text.encode("utf-8")).root_node):
        if node.type == "navigation_suffix":
            suffix = node.child_by_field_name("suffix")
            if suffix is not None and suffix.type == "simple_identifier":
                members.add(_text(suffix))
        elif node.type == "prefix_expression" and node.children and _text(node.children[0]) == ".":
            target = node.child_by_field_name("target")
            if target is not None and target.type == "simple_identifier":
                members.add(_text(target))
        elif node.type == "call_expression":
            signature = _call_signature(node)
            if signature is not None:
                calls.add(signature[1])
        elif node.type == "type_identifier":
            types.add(_text(node))
    return members, calls, types


def unknown_api_names(texts: list[str], apis: ApiList | None = None) -> list[str]:
    """Names used but neither declared in `texts` nor in the checked list (sorted problem descriptions)."""
    apis = apis or api_list()
    declared = declared_names(texts)
    problems: set[str] = set()
    for text in texts:
        members, calls, types = used_names(text)
        for signature in calls:
            base = signature.split("(", 1)[0]
            if base in declared:
                continue
            if base in apis.call_bases and signature not in apis.signatures and signature not in apis.allowed:
                problems.add(f"call {signature} is not in the checked API list")
            elif not apis.known(base) and base not in declared:
                problems.add(f"call {signature}: {base} is neither declared here nor in the checked list")
        for name in members | types:
            if name not in declared and not apis.known(name):
                problems.add(f"name {name} is neither declared here nor in the checked list")
    return sorted(problems)


def check_swift_files(paths: list[Path], root: Path) -> list[ScaffoldCheck]:
    """tree-sitter (Swift) on every .swift file, then the API-name check over all of them together."""
    swift = [p for p in paths if p.suffix == ".swift"]
    checks: list[ScaffoldCheck] = []
    try:
        for path in swift:
            problems = syntax_errors(path.read_text(encoding="utf-8"))
            checks.append(ScaffoldCheck(path.relative_to(root).as_posix(), "tree-sitter (swift)",
                                        "failed" if problems else "passed", "; ".join(problems[:5])))
        unknown = unknown_api_names([p.read_text(encoding="utf-8") for p in swift])
    except ImportError:
        return [ScaffoldCheck(p.relative_to(root).as_posix(), "tree-sitter (swift)", "skipped",
                              "tree-sitter-language-pack is not installed") for p in swift]
    checks.append(ScaffoldCheck("*.swift", "Core ML / swift-transformers / Foundation Models / Core AI names "
                                "(targets/ios/data/ios-api.json)",
                                "failed" if unknown else "passed", "; ".join(unknown[:8])))
    return checks
