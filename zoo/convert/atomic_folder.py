"""Writing an output folder all at once: into a temporary sibling, renamed into place at the end, so an
error or interruption never leaves a half-written folder and never destroys what was there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write over a file, or over a non-empty folder unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes `out`, on error it is removed."""
    out = Path(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished `staging` folder to `out`; an existing `out` is removed only after that."""
    if not out.is_dir():
        os.replace(staging, out)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, backup / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(backup / out.name, out)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)
