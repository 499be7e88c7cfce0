"""Multifunction Core ML packages: several single-function packages as the functions of one (iOS 18).

A fleet of LoRA specialists (targets.ios.fleet) ships one package with a function per specialist. coremltools'
save_multifunction gives every const the same blob in weight.bin when its value is the same in several
functions (its const_deduplication pass, also for the int4 data, scales and offsets of a compressed weight), so
a base stored in the same bytes by every specialist is on disk once and each function adds its own adapter.

Two things save_multifunction does not do: it writes no model metadata (swift-transformers and the simulation
read the sliding window and the name from it: copied back here from the first source package), and its
Manifest.json ids are random (targets.ios.convert.make_deterministic). The MIL interpreter simulates one
function at a time: `function_spec` gives the spec of a single-function package holding that function alone.

The child-process entry (`python -m targets.ios.multifunction REQUEST RESULT`) assembles a package, so the
programs coremltools loads for it return their memory when the child exits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.child_stage import serve_request
from packager.errors import InternalError
from targets.ios.convert import make_deterministic, package_bytes, root_spec_path

# The function of a single-function package, and what a one-function view of a multifunction one names its function.
MAIN = "main"
WEIGHTS = "weight.bin"


@dataclass(frozen=True)
class MultifunctionRequest:
    """What the child assembles: each function's source package by function name (in order; the first is the
    default function), where to write, and the model name its metadata says."""

    functions: dict[str, str]
    out: str
    name: str
    description: str


def assemble(request: MultifunctionRequest) -> dict[str, Any]:
    """Write the multifunction package; return its size and the sizes of its sources (the bytes deduplicated)."""
    import coremltools as ct

    sources = {name: Path(path) for name, path in request.functions.items()}
    descriptor = ct.utils.MultiFunctionDescriptor()
    for name, source in sources.items():
        descriptor.add_function(str(source), MAIN, name)
    descriptor.default_function_name = next(iter(sources))
    out = Path(request.out)
    ct.utils.save_multifunction(descriptor, str(out))
    _copy_metadata(next(iter(sources.values())), out, request.name, request.description)
    make_deterministic(out)
    return {"package": out.name, "functions": list(sources), "bytes": package_bytes(out),
            "weight_bytes": weight_bytes(out),
            "sources": {name: {"bytes": package_bytes(p), "weight_bytes": weight_bytes(p)}
                        for name, p in sources.items()}}


def weight_bytes(package: Path) -> int:
    """The size of a package's weight.bin (its consts' blobs): what deduplication shrinks."""
    return sum(p.stat().st_size for p in package.rglob(WEIGHTS))


def _copy_metadata(source: Path, package: Path, name: str, description: str) -> None:
    """Give the package the metadata of `source` (save_multifunction writes none), under the fleet's name."""
    from coremltools.proto import Model_pb2

    def spec_of(path: Path) -> Any:
        spec = Model_pb2.Model()
        spec.ParseFromString(root_spec_path(path).read_bytes())
        return spec

    spec = spec_of(package)
    metadata = spec.description.metadata
    metadata.CopyFrom(spec_of(source).description.metadata)
    metadata.shortDescription = description
    metadata.userDefined["co.huggingface.exporters.name"] = name
    root_spec_path(package).write_bytes(spec.SerializeToString())


def function_names(spec: Any) -> list[str]:
    """The functions of a package's spec (["main"] for a single-function package)."""
    return [f.name for f in spec.description.functions] or [MAIN]


def function_spec(spec: Any, function: str) -> Any:
    """The spec of a single-function package holding only `function` of a multifunction `spec`, named main: its
    inputs, outputs and states at the description's top level, the other functions' programs left out.

    coremltools' milproto loader reads every function of a program into one transcription context, and the
    functions of a fleet share their op names; one function alone is also all a simulation needs in memory.
    """
    from coremltools.proto import MIL_pb2, Model_pb2

    described = {f.name: f for f in spec.description.functions}
    if function not in described:
        raise InternalError(f"the package has no function {function!r}; it has {', '.join(function_names(spec))}")
    view = Model_pb2.Model()
    view.CopyFrom(spec)
    description = view.description
    del description.functions[:]
    description.defaultFunctionName = ""
    for field in ("input", "output", "state"):
        getattr(description, field).extend(getattr(described[function], field))
    program = view.mlProgram.functions
    kept = MIL_pb2.Function()
    kept.CopyFrom(program[function])
    for name in list(program):
        del program[name]
    program[MAIN].CopyFrom(kept)
    return view


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): a MultifunctionRequest in, what assemble() measured out."""
    return serve_request(__doc__.splitlines()[0], lambda request: assemble(MultifunctionRequest(**request)), argv)


if __name__ == "__main__":
    sys.exit(main())
