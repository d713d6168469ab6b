"""Bad samples: replaced, reported once, counted, remembered, and the run stopped only past a threshold.

Workers cannot share state with the main process, so each sample carries the failures met while producing it
(``"bad"``: :class:`Failure` records); the main process's :class:`BadFileMonitor` logs each file once, keeps the
counts for TensorBoard, and raises :class:`TooManyBadFiles` when a dataset's bad fraction (missing at start-up plus
undecodable so far, over the files listed) exceeds ``data.max_bad_fraction``.

The monitor also remembers *which* samples fail, as ``(dataset, index)``: the batch sampler hands that set to the
workers with every batch (:meth:`BadFileMonitor.known_bad`), and the dataset skips them without opening the file
again (no second decode attempt, no second burst of FFmpeg messages). Skipping is exact: the dataset draws a
replacement from the sample's seed and the attempt number only (:mod:`vmim.data.pretrain_dataset`), so a skipped
file yields the same sample as a read that fails again. :meth:`BadFileMonitor.state_dict` stores the memory in a
checkpoint, so known bad files stay known across a restart (with their paths: an entry whose index now names
another file, because the list changed, is forgotten).

Every verb keeps its bad files with this one class (issue 19), so they are treated alike: pretraining and fine-tuning
(a bad sample is replaced), validation and ``vmim eval`` (a bad video is a miss: counted in the denominator), the
probe (a bad sample is left out: the accuracies are over the files that loaded, and the result says how many were
skipped). ``action`` says which in each file's line; ``report`` is where the line goes (the log, or ``print`` for
the evaluation verbs, whose output is their stdout; a no-op on ranks other than 0 where every rank holds the same
merged records). Evaluation passes hand their known bad indices to :class:`vmim.data.eval_views.MultiViewDataset`,
which fails them again without opening the file.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

from ..errors import RunError

log = logging.getLogger("vmim")


class Failure(NamedTuple):
    """One failed read: dataset id, index in that dataset, the file, and why."""

    dataset: int
    index: int
    path: str
    reason: str


class TooManyBadFiles(RunError):
    pass


def failure_reason(err: BaseException) -> str:
    """What to report for a sample that failed: a DecodeError's reason, else the exception's type and message."""
    return getattr(err, "reason", None) or f"{type(err).__name__}: {err}"


class BadFileMonitor:
    """Main-process bookkeeping of bad files per dataset.

    Args:
        names: dataset names by id.
        listed: files listed per dataset (before dropping missing ones).
        missing: files dropped at start-up per dataset.
        max_fraction: allowed bad fraction per dataset.
        action: what happens to a bad sample, in its line ("skipped, replaced by another sample").
        report: where each new bad file's line goes (default: the "vmim" logger's warning).
    """

    def __init__(self, names: list[str], listed: list[int], missing: list[int], max_fraction: float,
                 action: str = "skipped, replaced by another sample", report: Callable[[str], None] | None = None):
        self.names, self.listed, self.missing = list(names), list(listed), list(missing)
        self.max_fraction = max_fraction
        self.action = action
        self.report = report if report is not None else log.warning
        self.bad: list[dict[str, str]] = [{} for _ in self.names]  # per dataset: path -> first reason
        self.indices: list[dict[int, str]] = [{} for _ in self.names]  # per dataset: failing index -> its path
        self._known: frozenset[tuple[int, int]] | None = frozenset()

    def update(self, failures: list[Failure]) -> None:
        """Record ``(dataset, index, path, reason)`` failures from a batch; log new files; raise past the threshold."""
        for dataset, index, path, reason in failures:
            if index not in self.indices[dataset]:
                self.indices[dataset][index] = path
                self._known = None
            if path in self.bad[dataset]:
                continue
            self.bad[dataset][path] = reason
            reason = " ".join(reason.split())  # one line per file, whatever the decoder wrote
            self.report(f"bad file in dataset '{self.names[dataset]}': {path}: {reason} ({self.action}; "
                        f"{len(self.bad[dataset])} bad so far)")
            self._check(dataset)

    def known_reasons(self, dataset: int) -> dict[int, str]:
        """{index: reason} of every known bad sample of ``dataset`` (for an evaluation pass to skip them)."""
        return {index: self.bad[dataset].get(path, "failed before") for index, path in self.indices[dataset].items()}

    def num_bad(self, dataset: int) -> int:
        """Bad files of ``dataset`` met so far (missing ones not included)."""
        return len(self.bad[dataset])

    def known_bad(self) -> frozenset[tuple[int, int]]:
        """Every ``(dataset, index)`` known to fail (the same object until a new one is recorded)."""
        if self._known is None:
            self._known = frozenset((d, i) for d, indices in enumerate(self.indices) for i in indices)
        return self._known

    def fraction(self, dataset: int) -> float:
        return (self.missing[dataset] + len(self.bad[dataset])) / max(1, self.listed[dataset])

    def check_all(self) -> None:
        """Raise TooManyBadFiles for the first dataset already past the threshold (files missing at start-up)."""
        for dataset in range(len(self.names)):
            self._check(dataset)

    def _check(self, dataset: int) -> None:
        fraction = self.fraction(dataset)
        if fraction > self.max_fraction:
            raise TooManyBadFiles(
                f"dataset '{self.names[dataset]}': {self.missing[dataset]} missing + {len(self.bad[dataset])} "
                f"undecodable of {self.listed[dataset]} listed files = {fraction:.1%}, more than "
                f"data.max_bad_fraction={self.max_fraction:g}. Fix or remove them (each has its own line above; "
                f"in a run's log.txt), or raise the threshold.")

    def scalars(self) -> dict[str, float]:
        out = {"data/bad_files": float(sum(len(b) for b in self.bad) + sum(self.missing))}
        for i, name in enumerate(self.names):
            out[f"data/bad_files/{name}"] = float(len(self.bad[i]) + self.missing[i])
        return out

    def state_dict(self) -> dict:
        """``{"bad_files": {dataset name: [[index, path, reason], ...]}}``: plain types, for a checkpoint."""
        return {"bad_files": {name: [[index, path, self.bad[d].get(path, "")]
                                     for index, path in sorted(self.indices[d].items())]
                              for d, name in enumerate(self.names)}}

    def load_state_dict(self, state: dict, describe: Callable[[int, int], str] | None = None) -> None:
        """Restore what :meth:`state_dict` saved (datasets matched by name; unknown names ignored). ``describe(dataset,
        index) -> path`` checks each entry against the current lists: one that now names another file is dropped.
        Raises TooManyBadFiles when the restored files put a dataset past the threshold."""
        self.bad = [{} for _ in self.names]
        self.indices = [{} for _ in self.names]
        self._known = None
        for name, entries in state.get("bad_files", {}).items():
            if name not in self.names:
                continue
            d = self.names.index(name)
            for index, path, reason in entries:
                if describe is not None and describe(d, int(index)) != path:
                    continue
                self.indices[d][int(index)] = path
                self.bad[d].setdefault(path, reason)
            if self.bad[d]:
                log.info(f"dataset '{name}': {len(self.bad[d])} bad files known from the checkpoint (skipped)")
            self._check(d)
