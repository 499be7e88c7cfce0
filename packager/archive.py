"""Reproducible tar.gz archives: the same files give the same bytes, whoever packs them and when.

Everything tar and gzip would take from the packing machine is fixed instead: entries are sorted,
every mtime is one given epoch, owners are uid/gid 0 with empty names, modes are 0755 for folders
and executables and 0644 for everything else, hard links are stored as plain files, and the gzip
header carries no file name and mtime 0. What remains is zlib's output for one compression level,
which is stable for a given zlib build (see docs/reproducibility.md).
"""

from __future__ import annotations

import gzip
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packager.errors import BadInputError

EXECUTABLE_MODE = 0o755
FILE_MODE = 0o644
# Level 6 is gzip's default: close to -9 in size on already-dense model weights, much faster.
COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class ArchiveMember:
    """One file going into an archive: where it comes from and where it lands inside."""

    source: Path
    name: str
    executable: bool


def is_executable(path: Path) -> bool:
    """Return whether any execute bit is set: the only part of a file's mode an archive keeps."""
    return bool(path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))


def members_of(folder: Path, prefix: str) -> list[ArchiveMember]:
    """Return every file under folder as members named prefix/<relative path>, sorted by name.

    Symbolic links are refused: what a link points to differs between machines, and a release
    must carry the bytes it names.
    """
    members = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise BadInputError(f"{path}: is a symbolic link; a release carries real files only. Replace it with "
                                "the file it points to.")
        if path.is_file():
            name = (PurePosixPath(prefix) / path.relative_to(folder).as_posix()).as_posix()
            members.append(ArchiveMember(path, name, is_executable(path)))
    return sorted(members, key=lambda m: m.name)


def _folders_of(names: list[str]) -> list[str]:
    folders = {str(parent) for name in names for parent in PurePosixPath(name).parents if str(parent) != "."}
    return sorted(folders)


def _info(name: str, mtime: int, mode: int, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = mtime
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar_gz(dest: Path, members: list[ArchiveMember], mtime: int) -> None:
    """Write members (with their parent folders) to dest as a reproducible tar.gz."""
    entries = sorted(members, key=lambda m: m.name)
    names = [m.name for m in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate archive member names in {dest.name}")
    with dest.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                               compresslevel=COMPRESS_LEVEL) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in _folders_of(names):
            tar.addfile(_info(folder, mtime, EXECUTABLE_MODE, kind=tarfile.DIRTYPE))
        for member in entries:
            size = member.source.stat().st_size
            mode = EXECUTABLE_MODE if member.executable else FILE_MODE
            with member.source.open("rb") as fh:
                # tarfile copies exactly `size` bytes and raises if the file shrank meanwhile.
                tar.addfile(_info(member.name, mtime, mode, size), fh)
