"""Silencing what native libraries print: C++ code (the ONNX exporter, ITK's MetaIO) writes to
the process's file descriptors 1 and 2 directly, past Python's `sys.stdout`/`sys.stderr`, so a
failure the user gets as one line would otherwise come with a dump of the library's own
messages."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

# Redirecting a descriptor is process-wide: two threads doing it at once could each restore the
# other's redirection and lose the terminal for good, so one at a time.
_LOCK = threading.Lock()


@contextlib.contextmanager
def native_output_discarded(fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Discard what is written to the descriptors `fds` (stdout and stderr by default) inside
    the block, by Python or by native code; they are restored whatever happens."""
    with _LOCK:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in fds}
        try:
            with tempfile.TemporaryFile() as sink:
                for fd in saved:
                    os.dup2(sink.fileno(), fd)
                try:
                    yield
                finally:
                    for fd, copy in saved.items():
                        os.dup2(copy, fd)
        finally:
            for copy in saved.values():
                os.close(copy)


__all__ = ["native_output_discarded"]
