"""React Native: the GGUF for llama.rn, a TypeScript bridge, and a sample app that runs the task contract.

The GGUF comes from the same shared stage as raspberry-pi (one conversion per build) and is verified
in the host's llama.cpp. llama.rn bundles its own, different llama.cpp build, so before anything is
written the GGUF's architecture, tokenizer, BOS flag and end-of-generation tokens are checked against
what that build accepts (targets/react_native/data/llama_rn_support.json, generated from llama.rn's sources by
scripts/llama_rn_support.py).

A fleet (packager.fleet) ships the base GGUF once and one GGUF LoRA adapter per specialist: the app
loads the base once and llama.rn applies the chosen specialist's adapter at run time (the bridge's
EdgeFleet), each specialist under its own contract from edgepack.json.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import gguf

from packager import __version__
from packager.architectures import ArchitectureSpec
from packager.codecheck import check_generated_files
from packager.contract import Contract
from packager.errors import InternalError, UnsupportedError
from packager.escaping import slug
from packager.fleet import Fleet, choose_fleet_gguf
from packager.formats.gguf_writer import writes_architecture
from packager.resources import copy_mobile_files
from packager.stage_cache import place_artifact
from packager.stages import BuildContext
from packager.target import ScaffoldCheck, TargetResult
from packager.target_bundle import finish_bundle, list_bundle
from packager.templating import render_tree
from packager.verify.result import VerificationResult
from packager.window_cache import full_window_cache

LLAMA_RN_VERSION = "0.12.9"
SUPPORT_TABLE = Path(__file__).resolve().parent / "data" / "llama_rn_support.json"
APP_DIR = "app"
# Where the bridge's TypeScript sources go inside the generated app.
BRIDGE_DIR = "src/edgepack"
UPGRADE_HINT = (
    "Use a newer llama.rn: raise the pin in mobile/react-native/package.json and "
    "templates/react-native/package.json, run `scripts/llama_rn_support.py node_modules/llama.rn`, and rebuild."
)


@cache
def support_table(path: Path = SUPPORT_TABLE) -> dict[str, Any]:
    """Return what the pinned llama.rn's llama.cpp accepts (see scripts/llama_rn_support.py)."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InternalError(f"{path}: the llama.rn support table cannot be read ({exc}); reinstall edgepack.") from None
    if table.get("llama.rn") != LLAMA_RN_VERSION:
        raise InternalError(
            f"{path} describes llama.rn {table.get('llama.rn')}, but this target pins {LLAMA_RN_VERSION}; "
            "regenerate it with scripts/llama_rn_support.py."
        )
    return table


# ---------------------------------------------------------------------------------------------
# GGUF metadata, read without gguf.GGUFReader: the reader builds an object per array item and takes
# about 30 s on Gemma's 262k-token vocabulary; this walks the key-value section once (< 1 s).

_SCALARS: dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H", gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.UINT64: "<Q", gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.FLOAT64: "<d",
    gguf.GGUFValueType.BOOL: "<?",
}


@dataclass
class GGUFMetadata:
    """The scalar metadata of a GGUF, plus the texts of the few tokens asked for."""

    values: dict[str, Any] = field(default_factory=dict)
    token_texts: dict[int, str] = field(default_factory=dict)


def _read(stream: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_string(stream: BinaryIO) -> str:
    length = _read(stream, "<Q")
    data = stream.read(length)
    if len(data) != length:
        raise EOFError("truncated GGUF string")
    return data.decode("utf-8", errors="replace")


def read_gguf_metadata(path: Path, token_ids: set[int]) -> GGUFMetadata:
    """Return the GGUF's scalar key-values and the texts of token_ids (tokenizer.ggml.tokens)."""
    meta = GGUFMetadata()
    with path.open("rb") as stream:
        if stream.read(4) != b"GGUF":
            raise InternalError(f"{path}: not a GGUF file")
        version = _read(stream, "<I")
        if version not in (2, 3):
            raise InternalError(f"{path}: GGUF version {version} (big-endian or unknown) cannot be checked")
        _read(stream, "<Q")  # tensor count
        for _ in range(_read(stream, "<Q")):
            key = _read_string(stream)
            kind = gguf.GGUFValueType(_read(stream, "<I"))
            if kind == gguf.GGUFValueType.STRING:
                meta.values[key] = _read_string(stream)
            elif kind in _SCALARS:
                meta.values[key] = _read(stream, _SCALARS[kind])
            elif kind == gguf.GGUFValueType.ARRAY:
                item = gguf.GGUFValueType(_read(stream, "<I"))
                count = _read(stream, "<Q")
                if item == gguf.GGUFValueType.STRING:
                    wanted = token_ids if key == "tokenizer.ggml.tokens" else set()
                    for index in range(count):
                        if index in wanted:
                            meta.token_texts[index] = _read_string(stream)
                        else:
                            stream.seek(_read(stream, "<Q"), 1)
                elif item in _SCALARS:
                    stream.seek(count * struct.calcsize(_SCALARS[item]), 1)
                else:
                    raise InternalError(f"{path}: nested array in {key} cannot be checked")
            else:
                raise InternalError(f"{path}: unknown GGUF value type {kind} for {key}")
    return meta


# ---------------------------------------------------------------------------------------------
# What llama.rn's llama.cpp will do with this GGUF.

_EOG_ID_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
                "tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id",
                "tokenizer.ggml.fim_sep_token_id")


@dataclass
class RuntimeFacts:
    """How llama.rn will read the GGUF (recorded in edgepack.json)."""

    architecture: str
    tokenizer_model: str
    pre_tokenizer: str | None
    add_bos: bool
    eog_ids: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "tokenizer_model": self.tokenizer_model,
                "pre_tokenizer": self.pre_tokenizer, "add_bos": self.add_bos, "eog_ids": self.eog_ids}


def llama_rn_adds_bos(meta: GGUFMetadata, model_row: dict[str, Any], pre: str | None, rules: dict[str, Any]) -> bool:
    """Return whether llama.rn's llama.cpp puts BOS before a prompt: its default, the GGUF's flag, its overrides."""
    add_bos = rules["vocab"].get(model_row["vocab"], rules["default"])
    if model_row["vocab"] == "bpe" and pre in rules["bpe_pre_true"]:
        add_bos = True
    declared = meta.values.get("tokenizer.ggml.add_bos_token")
    if isinstance(declared, bool):
        add_bos = declared
    return add_bos or pre in rules["forced_pre"]


def check_llama_rn_support(path: Path, artifact: str, contract: Contract, table: dict[str, Any]) -> RuntimeFacts:
    """Return how llama.rn will run the GGUF, or raise UnsupportedError saying what it would get wrong."""
    meta = read_gguf_metadata(path, set(contract.eos_ids))
    runtime = f"llama.rn {table['llama.rn']} (llama.cpp {table['llama.cpp']['build']})"
    arch = meta.values.get("general.architecture")
    if arch not in table["architectures"]:
        raise UnsupportedError(
            f"{artifact}: architecture {arch!r} (general.architecture) is not known to {runtime}; the app "
            f"could not load the model. {UPGRADE_HINT}"
        )
    tokenizer_model = meta.values.get("tokenizer.ggml.model")
    model_row = table["tokenizer_models"].get(tokenizer_model)
    if model_row is None:
        raise UnsupportedError(
            f"{artifact}: tokenizer model {tokenizer_model!r} (tokenizer.ggml.model) is not known to {runtime}. "
            f"{UPGRADE_HINT}"
        )
    pre = meta.values.get("tokenizer.ggml.pre")
    effective_pre = model_row["pre"] or pre
    if model_row["vocab"] == "bpe" and model_row["pre"] is None:
        if not pre:
            raise UnsupportedError(
                f"{artifact}: no pre-tokenizer (tokenizer.ggml.pre); {runtime} would split text with its "
                "default rules and tokenize differently from the model's own tokenizer."
            )
        if pre not in table["pre_tokenizers"]:
            raise UnsupportedError(
                f"{artifact}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not known to {runtime}; the app "
                f"would fail to load the model (\"unknown pre-tokenizer type\"). {UPGRADE_HINT}"
            )
    add_bos = llama_rn_adds_bos(meta, model_row, effective_pre, table["add_bos"])
    if add_bos != contract.add_bos:
        declared = meta.values.get("tokenizer.ggml.add_bos_token")
        source = "its default for this tokenizer" if declared is None else f"tokenizer.ggml.add_bos_token={declared}"
        raise UnsupportedError(
            f"{artifact}: {runtime} would {'add' if add_bos else 'not add'} BOS before every prompt ({source}; "
            f"llama.rn has no BOS option), but the model was fine-tuned with add_bos={contract.add_bos}: prompts "
            "on the phone would not match training."
        )
    eog_ids = sorted({int(meta.values[k]) for k in _EOG_ID_KEYS if k in meta.values}
                     | {i for i, text in meta.token_texts.items() if text in table["eog_token_texts"]})
    missing = [i for i in contract.eos_ids if i not in eog_ids]
    if missing:
        names = ", ".join(f"{i} ({meta.token_texts.get(i, '?')!r})" for i in missing)
        raise UnsupportedError(
            f"{artifact}: end-of-generation token(s) {names} of the contract would not stop generation in "
            f"{runtime}, which stops on {eog_ids} (tokenizer.ggml.eos/eot_token_id and the token texts it knows); "
            f"answers on the phone would run past the model's end. {UPGRADE_HINT}"
        )
    return RuntimeFacts(str(arch), str(tokenizer_model), pre if isinstance(pre, str) else None, add_bos, eog_ids)


def check_llama_rn_adapter(path: Path, artifact: str, architecture: str, table: dict[str, Any]) -> None:
    """Raise UnsupportedError unless llama.rn's llama.cpp would apply the file as a LoRA adapter of `architecture`.

    Its llama_adapter_lora_init (llama.rn cpp/llama-adapter.cpp) refuses a file whose general.type is not
    "adapter", whose general.architecture is not the loaded model's or whose adapter.type is not "lora";
    the tensors it then expects (<name>.lora_a / .lora_b) are those the host's llama.cpp applied in verification.
    """
    meta = read_gguf_metadata(path, set())
    wanted = {"general.type": "adapter", "general.architecture": architecture, "adapter.type": "lora"}
    wrong = [f"{key}={meta.values.get(key)!r} (needs {value!r})" for key, value in wanted.items()
             if meta.values.get(key) != value]
    if wrong:
        raise UnsupportedError(
            f"{artifact}: llama.rn {table['llama.rn']} (llama.cpp {table['llama.cpp']['build']}) would refuse to "
            f"apply this LoRA adapter to the base model: {', '.join(wrong)}. Rebuild with a matching base and "
            "adapter, or report the adapter's source."
        )


# ---------------------------------------------------------------------------------------------


def copy_bridge(dest: Path) -> list[Path]:
    """Copy the bridge's TypeScript sources (mobile/react-native/src) into the app, byte for byte."""
    return copy_mobile_files("react-native/src", ("*.ts",), dest)


@dataclass(frozen=True)
class ShippedSpecialist:
    """A fleet specialist in the app: its LoRA adapter (applied by llama.rn at run time), contract and
    verification (the base GGUF with this adapter, in the host's llama.cpp)."""

    name: str
    adapter: Path
    contract: Contract
    verification: VerificationResult


@dataclass(frozen=True)
class AppBundle:
    """What one app bundle ships: a GGUF (the model, or a fleet's base) and, for a fleet, each specialist."""

    model_name: str
    quant: str
    # The GGUF in the stage cache.
    gguf: Path
    context_length: int
    # Whether llama.rn keeps the local layers of a sliding-window model cached over the context (window_cache).
    full_window_cache: bool
    # The model's contract; a fleet's base contract (each specialist carries its own).
    contract: Contract
    gguf_choice: dict[str, Any]
    notes: list[str]
    # One model: the GGUF's own verification; a fleet has one per specialist instead.
    verification: VerificationResult | None = None
    specialists: list[ShippedSpecialist] = field(default_factory=list)

    @property
    def gguf_file(self) -> str:
        return f"model-{self.quant}.gguf"

    def verifications(self, target: str) -> list[VerificationResult]:
        """Each verification under the name of what ships: the GGUF, or the GGUF + a specialist's adapter."""
        if self.verification is not None:  # one model
            return [self.verification.shipped_as(target, [self.gguf_file])]
        return [s.verification.shipped_as(target, [self.gguf_file, s.adapter.name]) for s in self.specialists]


class ReactNativeTarget:
    """GGUF + edgepack.json + a React Native app (TypeScript bridge over llama.rn), checked for llama.rn."""

    name: ClassVar[str] = "react-native"
    title: ClassVar[str] = "React Native app (iOS + Android): GGUF on llama.rn"
    runtime: ClassVar[str] = f"llama.rn {LLAMA_RN_VERSION}"
    status: ClassVar[str] = "ready"
    # llama.cpp's usual size/fidelity balance on phone CPUs.
    default_quant: ClassVar[str | None] = "Q4_K_M"

    def supports(self, spec: ArchitectureSpec) -> bool:
        """Every architecture the shared GGUF stage writes."""
        return writes_architecture(spec)

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult:
        choice = ctx.chosen_gguf(self)
        return self._bundle(out_dir, AppBundle(
            model_name=ctx.model_name, quant=choice.quant, gguf=choice.file,
            context_length=ctx.context_length,
            full_window_cache=full_window_cache(ctx.ckpt.config, ctx.context_length), contract=ctx.contract,
            gguf_choice=choice.as_dict(),
            notes=choice.notes(), verification=choice.verification))

    def build_fleet(self, fleet: Fleet, out_dir: Path) -> TargetResult:
        """One app: the base GGUF once (the smallest rung on which every specialist passes with its adapter)
        and an adapter per specialist; the app loads the base once and applies one adapter at a time."""
        choice = choose_fleet_gguf(fleet, self)
        note = (f"React Native: the app loads the base GGUF once and {self.runtime} applies one specialist's adapter "
                f"at a time (EdgeFleet.use), each specialist under its own contract ({', '.join(fleet.names)}). Each "
                "adapter was verified on the base in the build host's llama.cpp and checked to be loadable by "
                "llama.rn's.")
        # The app opens the base once, for the longest context any specialist needs.
        context_length = max(s.ctx.context_length for s in fleet.specialists)
        return self._bundle(out_dir, AppBundle(
            model_name=fleet.base.model_name, quant=choice.quant, gguf=choice.file,
            context_length=context_length,
            full_window_cache=full_window_cache(fleet.base.ckpt.config, context_length), contract=fleet.base.contract,
            gguf_choice=choice.as_dict(), notes=[*choice.notes(), note],
            specialists=[ShippedSpecialist(s.name, choice.adapters[s.name], s.ctx.contract,
                                           choice.verifications[s.name]) for s in fleet.specialists]))

    def _bundle(self, out_dir: Path, bundle: AppBundle) -> TargetResult:
        """Write the app bundle: the GGUF, the fleet's adapters, the rendered app and the bridge, edgepack.json."""
        gguf_file = bundle.gguf_file
        table = support_table()
        artifact = f"{self.name}/{gguf_file}"
        facts = check_llama_rn_support(bundle.gguf, artifact, bundle.contract, table)
        for s in bundle.specialists:
            # The base GGUF must honour every specialist's contract too (its BOS flag, its end-of-generation ids).
            check_llama_rn_support(bundle.gguf, f"{artifact} + {s.adapter.name}", s.contract, table)
            check_llama_rn_adapter(s.adapter, f"{self.name}/{s.adapter.name}", facts.architecture, table)
        out_dir.mkdir(parents=True, exist_ok=True)
        place_artifact(bundle.gguf, out_dir / gguf_file)
        for s in bundle.specialists:
            place_artifact(s.adapter, out_dir / s.adapter.name)
        verifications = bundle.verifications(self.name)

        contract = bundle.contract
        app = out_dir / APP_DIR
        rendered = render_tree("react-native", app, {
            "model_name": bundle.model_name,
            "slug": slug(bundle.model_name),
            "gguf_file": gguf_file,
            "quant": bundle.quant,
            "context_length": bundle.context_length,
            "task": contract.task,
            "labels": list(contract.labels or []),
            "constrained": contract.constrained,
            "llama_rn_version": table["llama.rn"],
            "llama_cpp_build": table["llama.cpp"]["build"],
            "architecture": facts.architecture,
            "pre_tokenizer": facts.pre_tokenizer or "",
            "verification_rows": [v.summary_row(v.artifact.removeprefix(f"{self.name}/")) for v in verifications],
            "edgepack_version": __version__,
            "size_mb": _size_mb(out_dir / gguf_file),
            "specialists": [{"name": s.name, "file": s.adapter.name, "task": s.contract.task,
                             "size_mb": _size_mb(out_dir / s.adapter.name)} for s in bundle.specialists],
        })
        bridge = copy_bridge(app / BRIDGE_DIR)
        checks = check_generated_files(rendered, out_dir)
        checks.append(ScaffoldCheck(
            f"{APP_DIR}/", "tsc --noEmit + jest", "skipped",
            "needs node_modules (npm ci); edgepack's test suite type-checks and tests the generated app",
        ))

        # The app loads the same document as an asset (model file, hash, contract, specialists).
        listed = list_bundle(out_dir, copies=(f"{APP_DIR}/edgepack.json",))
        gguf_entry = listed.entry(gguf_file)
        sections: dict[str, Any] = {
            "model": {"name": bundle.model_name, "file": gguf_file, "format": "gguf", "quant": bundle.quant,
                      "context_length": bundle.context_length, "full_window_cache": bundle.full_window_cache,
                      "sha256": gguf_entry["sha256"],
                      "bytes": gguf_entry["bytes"]}}
        if bundle.specialists:
            sections["specialists"] = []
            for s in bundle.specialists:
                entry = listed.entry(s.adapter.name)
                sections["specialists"].append({"name": s.name, "lora_adapter": s.adapter.name,
                                                "sha256": entry["sha256"], "bytes": entry["bytes"],
                                                "contract": s.contract.as_dict()})
        return finish_bundle(
            out_dir, self,
            {**sections, "contract": contract.as_dict(), "gguf_choice": bundle.gguf_choice,
             "llama_rn": {"version": table["llama.rn"], "llama_cpp": table["llama.cpp"], **facts.as_dict()}},
            verifications, checks, listed=listed,
            notes=[
                *bundle.notes,
                f"React Native: the GGUF was verified in the build host's llama.cpp; on the phone it runs in "
                f"llama.rn {table['llama.rn']}, which bundles llama.cpp {table['llama.cpp']['build']}. Its "
                "architecture, pre-tokenizer, BOS flag and end-of-generation tokens were checked against that "
                "build's sources; nothing ran on a phone.",
            ],
            extra={"bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge]},
            specialists={v.artifact: s.name for s, v in zip(bundle.specialists, verifications, strict=True)}
            if bundle.specialists else {},
        )


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 1)
