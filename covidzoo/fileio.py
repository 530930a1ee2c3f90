"""Atomic file writes: write to a temporary file beside the target, then rename onto it.

A reader (or a run killed mid-write) never sees a half-written checkpoint, cache volume, index,
plot or JSON file: the rename is atomic on POSIX file systems. Files that belong together (a
run's checkpoints, state and metrics of one epoch) are saved as one `Generations` step, made
current by one atomic rename of a link; `exclusive_lock` keeps a second writer out of a folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The advisory lock file of a folder that one writer at a time may fill (a run, a cache).
LOCK_NAME = ".covidzoo.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it.
_UMASK = _umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename the temporary file onto `path`.

    The file gets the permissions a plain `open(path, "w")` would give (0666 less the umask),
    not mkstemp's private 0600: checkpoints, exports and reports are meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename == tmp:  # the user knows the path they asked for, not our temporary
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done: files that belong together (a checkpoint and its
    resume state) are written together or not at all. Outside the main thread (where signals
    cannot be caught) a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def exclusive_lock(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an advisory lock on `folder` (its `.covidzoo.lock` file) for the block, so a second
    writer (`what`: e.g. "a training run") is refused at once instead of interleaving its files.

    `fcntl.flock` locks belong to the open file: the kernel drops them when the process dies, so
    a crashed or killed writer never leaves the folder stuck. The lock file itself stays (it is
    empty and harmless; deleting it while held would let a second writer in).
    """
    import fcntl

    from .errors import BadInputError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(
                f"{folder}: {what} is already writing here (another process holds "
                f"{folder / LOCK_NAME}); wait for it or choose another folder") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- generations: files that belong together, made current by one atomic step -----------------

# The test-only hook of the kill-and-resume test: `COVIDZOO_TEST_KILL_AT=POINT[:LABEL]` makes the
# process SIGKILL itself at that point of a save (of the generation LABEL, e.g. an epoch).
KILL_AT_ENV = "COVIDZOO_TEST_KILL_AT"
# Where a folder's generations live, the link naming the current one, a generation's manifest.
GENERATIONS = "generations"
CURRENT = "current"
MANIFEST = "generation.json"
# A generation's folder is `PREFIX-LABEL` (LABEL zero-padded, so names sort by label); one being
# written is `.PREFIX-LABEL.PID.staging`, left behind only by a crash.
_GENERATION = re.compile(r"^(?P<prefix>[a-z]+)-(?P<label>\d+)$")
_STAGING = re.compile(r"^\.[a-z]+-\d+\.\d+\.staging$")


def kill_point(point: str, label: int) -> None:
    """Die here, as `kill -9` would, when `COVIDZOO_TEST_KILL_AT` names `point` (and `label`)."""
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition(":")
    if name == point and (not at or at == str(label)):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_file(digest: Any, path: str | os.PathLike[str]) -> None:
    """Feed `path`'s bytes to a hashlib `digest`, a megabyte at a time (checkpoints are large)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)


def sha256_file(path: str | os.PathLike[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    digest_file(digest, path)
    return digest.hexdigest()


@dataclass(frozen=True)
class Generation:
    """One complete, verified set of files: `path/NAME` for each NAME in `files` (its sha256)."""

    path: Path
    label: int
    files: dict[str, str]

    def __contains__(self, name: str) -> bool:
        return name in self.files


class Generations:
    """A folder's saved state as generations: `folder/generations/PREFIX-LABEL/` holds files
    that belong together and a manifest of their sha256 sums; the link `folder/current` names
    the current one.

    A new generation is written whole in a staging folder, fsynced, renamed into place, and
    made current by one atomic step: replacing the `current` link. A crash at any moment leaves
    the previous generation current and complete; what it left half-done is removed by `clean`.
    The generation before the current one is kept, so a current one that fails its checksums
    (a damaged disk, an edited file) still leaves a complete one to fall back to.
    """

    def __init__(self, folder: str | os.PathLike[str], prefix: str) -> None:
        self.folder = Path(folder)
        self.root = self.folder / GENERATIONS
        self.prefix = prefix

    def name(self, label: int) -> str:
        return f"{self.prefix}-{label:06d}"

    def labels(self) -> list[int]:
        """The labels of the generation folders present (complete or not), ascending."""
        if not self.root.is_dir():
            return []
        found = [_GENERATION.match(p.name) for p in self.root.iterdir()]
        return sorted(int(m["label"]) for m in found if m and m["prefix"] == self.prefix)

    def current_label(self) -> int | None:
        """The label the `current` link names (None: nothing committed yet), unverified."""
        link = self.folder / CURRENT
        if not link.is_symlink():
            return None
        match = _GENERATION.match(Path(os.readlink(link)).name)
        return int(match["label"]) if match and match["prefix"] == self.prefix else None

    def verify(self, label: int) -> Generation:
        """The generation `label`, its manifest and every file's sha256 checked; a
        `BadInputError` naming the first file that does not match."""
        from .errors import BadInputError

        path = self.root / self.name(label)
        manifest = path / MANIFEST
        try:
            recorded = json.loads(manifest.read_text())
            files = {str(k): str(v) for k, v in recorded["files"].items()}
            if int(recorded["label"]) != label:
                raise ValueError(f"label {recorded['label']}, not {label}")
        except FileNotFoundError:
            raise BadInputError(f"{manifest}: missing; the generation is incomplete") from None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{manifest}: corrupt manifest ({exc})") from None
        for name, digest in files.items():
            if Path(name).name != name or name == MANIFEST:
                raise BadInputError(f"{manifest}: corrupt manifest (file name '{name}')")
            file = path / name
            if not file.is_file():
                raise BadInputError(f"{file}: missing from its generation")
            if sha256_file(file) != digest:
                raise BadInputError(f"{file}: does not match the sha256 recorded when it was "
                                    "written (damaged or edited)")
        return Generation(path, label, files)

    def commit(self, label: int, write: Callable[[Path], None],
               carry: Iterable[str] = ()) -> Generation:
        """Write generation `label` and make it current.

        `write(folder)` writes the new files into an empty staging folder; each name in `carry`
        is taken over unchanged from the current generation (a hard link, a copy where the file
        system has none). Returns the new current generation.
        """
        previous = self.current_label()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{self.name(label)}.{os.getpid()}.staging"
        _remove_tree(staging)
        staging.mkdir()
        try:
            write(staging)
            kill_point("written", label)
            files = self._carry(previous, carry, staging)
            for file in sorted(staging.iterdir()):
                fsync_path(file)
                files[file.name] = files.get(file.name) or sha256_file(file)
            manifest = {"label": label, "files": files}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
            fsync_path(staging / MANIFEST)
            fsync_path(staging)
            kill_point("staged", label)
            final = self.root / self.name(label)
            if final.exists():  # left by a crash, or the damaged generation fallen back from
                _remove_tree(final)
            os.replace(staging, final)
        except BaseException:
            _remove_tree(staging)
            raise
        fsync_path(self.root)
        kill_point("renamed", label)
        self._point_to(label)
        kill_point("committed", label)
        self._prune(keep={label, previous})
        return Generation(final, label, files)

    def resumable(self, warn: Callable[[str], None]) -> Generation | None:
        """The generation to continue from: the current one, verified. Where it fails its
        checks, or a crash came before anything was made current, the newest complete older
        one is made current (`warn` is told why). None when there is no generation at all; a
        `BadInputError` naming the current one's first bad file when none is complete."""
        from .errors import BadInputError

        current = self.current_label()
        candidates = [] if current is None else [current]
        candidates += [label for label in reversed(self.labels())
                       if current is None or label < current]
        failure: BadInputError | None = None
        for label in candidates:
            try:
                generation = self.verify(label)
            except BadInputError as exc:
                failure = failure or exc
                continue
            if label != current:
                if failure is not None:
                    warn(f"{failure}; continuing from {self.root / self.name(label)} instead")
                self._point_to(label)
            return generation
        if failure is not None:
            raise failure
        return None

    def _carry(self, previous: int | None, carry: Iterable[str], staging: Path) -> dict[str, str]:
        """Link the `carry` files of generation `previous` into `staging`; their recorded sums."""
        import shutil

        sums: dict[str, str] = {}
        names = list(carry)
        if previous is None or not names:
            return sums
        source = self.root / self.name(previous)
        recorded = json.loads((source / MANIFEST).read_text())["files"]
        for name in names:
            try:
                os.link(source / name, staging / name)
            except OSError:  # no hard links here (some network and FUSE file systems)
                shutil.copyfile(source / name, staging / name)
            sums[name] = recorded[name]
        return sums

    def _point_to(self, label: int) -> None:
        """The one atomic step: replace the `current` link."""
        link = self.folder / CURRENT
        tmp = self.folder / f".{CURRENT}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path(GENERATIONS) / self.name(label), tmp)
        os.replace(tmp, link)
        fsync_path(self.folder)

    def _prune(self, keep: set[int | None]) -> None:
        for old in self.labels():
            if old not in keep:
                _remove_tree(self.root / self.name(old))

    def clean(self) -> None:
        """Remove what a crash left: staging folders, temporary links, and (once a generation is
        current) every generation but the current one and the one before it. Without a current
        one, complete generations stay (a killed first save may have left one to resume from).
        Only names that `commit` writes are touched."""
        current = self.current_label()
        if current is not None:
            self._prune(keep={current, max((n for n in self.labels() if n < current),
                                           default=None)})
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if _STAGING.match(entry.name):
                    _remove_tree(entry)
        for stale in self.folder.glob(f".{CURRENT}.*.tmp"):
            stale.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
