"""Keep decoder messages off the terminal; the last of them become part of the failure reason instead.

FFmpeg (decord bundles its own) and decord's C++ logging write straight to file descriptor 2 ("moov atom not found",
"ERROR opening ..."), several lines per bad file and again at every retry, while the run already reports each bad
file once with its reason (:class:`vmim.data.bad_files.BadFileMonitor`). Python-level redirection cannot catch
writes from C, so the descriptor itself is pointed at an unlinked temporary file: for the whole life of a decode
child (:mod:`vmim.data.isolation`), or around one in-process read inside a data-loader worker. What a failed read
wrote is cut down to its last distinct lines and appended to the reason; what a successful read wrote (FFmpeg also
warns about files it decodes fine) is dropped.

Not used around reads in the trainer's own process (``num_workers: 0`` without isolation): moving its descriptor 2
would also swallow what other threads print meanwhile.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

MAX_LINES = 2
MAX_CHARS = 200

_FFMPEG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")  # "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5635...] "
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")  # "[22:41:30] /src/video/video_reader.cc:83: "
_DECORD_OPENING = re.compile(r"^ERROR opening: .*?, ")  # "ERROR opening: /the/file.mp4, Invalid data ...": the path


def summarize(text: str, max_lines: int = MAX_LINES) -> str:
    """The last ``max_lines`` distinct informative lines of decoder output, prefixes stripped, joined by ' | '."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = _DECORD_PREFIX.sub("", _FFMPEG_PREFIX.sub("", raw.strip())).strip()
        line = _DECORD_OPENING.sub("cannot open: ", line)
        if line and "Stack trace" not in line and not line.startswith(("Traceback", "File ")):
            if line in lines:
                lines.remove(line)
            lines.append(line)
    return " | ".join(line[:MAX_CHARS] for line in lines[-max_lines:])


class StderrCapture:
    """Points file descriptor 2 at an unlinked temporary file until :meth:`restore`; a context manager restores on
    exit. :meth:`take` returns what was written since the last take (and forgets it)."""

    def __init__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        with tempfile.TemporaryFile() as file:  # unlinked at once; the duplicate descriptor keeps it open
            self._fd = os.dup(file.fileno())
        os.dup2(self._fd, 2)  # fd 2 and self._fd share one offset: reads and writes below go through the OS only

    def take(self) -> str:
        """Decoder output written since the last call, summarized (see :func:`summarize`)."""
        sys.stderr.flush()
        size = os.lseek(self._fd, 0, os.SEEK_END)
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while size > 0 and (chunk := os.read(self._fd, size)):
            chunks.append(chunk)
            size -= len(chunk)
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)  # the next message lands at the start
        data = b"".join(chunks)
        return summarize(data.decode("utf-8", "replace"))

    def restore(self) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._fd)
        self._saved = None

    def __enter__(self) -> "StderrCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def with_decoder_output(reason: str, output: str) -> str:
    """``reason``, plus the decoder's own last words when they add something."""
    if not output or output in reason:
        return reason
    return f"{reason} [decoder: {output}]"
