"""Where covidzoo keeps what it generates for itself: the user cache folder and its parts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """covidzoo's user cache folder: `$COVIDZOO_CACHE`, else `$XDG_CACHE_HOME/covidzoo`, else
    `~/.cache/covidzoo`."""
    if os.environ.get("COVIDZOO_CACHE"):
        return Path(os.environ["COVIDZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "covidzoo"


def demo_dir(name: str) -> Path:
    """The folder of one generated demo data set."""
    return cache_root() / "demo" / name


def prepared_dir(source: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """The cache folder of one (data source, preprocessing config) pair: a cache mirrors the
    records it was prepared from, so two data sets or two configs must not share one."""
    key = json.dumps([str(source), config], sort_keys=True)
    return cache_root() / "prepared" / hashlib.sha1(key.encode()).hexdigest()[:16]
