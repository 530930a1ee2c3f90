"""Listing a data folder: hidden names skipped, a broken or looping symbolic link refused.

A link whose target is missing or that points back at itself would otherwise be skipped as
"neither a file nor a folder", and a scan (or a slice of one) would vanish from the data
without a word; an unreadable folder would be a traceback.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError


def list_folder(folder: Path) -> list[Path]:
    """The entries of `folder` not named `.something`, sorted; `BadInputError` naming the
    entry for a broken or looping symbolic link, naming the folder when it cannot be read."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise BadInputError(f"{folder}: cannot list the folder ({exc.strerror})") from exc
    for entry in entries:
        try:
            entry.stat()
        except OSError as exc:  # ELOOP, ENOENT (a dangling link), EACCES
            raise BadInputError(
                f"{entry}: {exc.strerror} (a broken or looping symbolic link?)") from exc
    return entries
