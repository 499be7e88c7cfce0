"""Converters a target needs for one of its formats only, installed apart from edgepack's own dependencies.

They are found without importing them (an import of litert_torch or coreai_torch pulls in torch and
more), and a build that asks for the format without them stops before any work with exit 3 and the
command that installs them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from packager.errors import UnsupportedError


@dataclass(frozen=True)
class OptionalPackages:
    """The pip packages (by the module each provides) that `option` needs, and what to do instead."""

    option: str  # what the user asked for, as they wrote it: "--android-runtime litert-lm"
    modules: dict[str, str]  # module -> pip package
    requirements: str  # the pinned list scripts/setup.sh installs with --no-deps
    instead: str  # the option that builds without them

    def missing(self) -> list[str]:
        return [package for module, package in self.modules.items() if importlib.util.find_spec(module) is None]

    def require(self) -> None:
        """Raise UnsupportedError (exit 3) naming the missing packages, the set-up command and the alternative."""
        missing = self.missing()
        if missing:
            raise UnsupportedError(
                f"{self.option} needs {', '.join(missing)}, which this Python lacks. Run scripts/setup.sh (it "
                f"installs {self.requirements} with --no-deps), or build with {self.instead}.")
