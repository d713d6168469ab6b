"""What ``vmim probe`` reports: per-draw accuracies, their mean and spread, the console tables, the results files and
the progress lines (docs/probes.md says how to read them).

Decisions:

* **Every draw is kept** (:class:`Cell`): a figure in a paper is a mean over label draws, and its spread is what says
  whether two columns differ. ``std`` is the sample standard deviation (``ddof=1``) over the draws, 0 for a single
  draw (the "all labels" budget of a deterministic method: linear and k-NN fit once); ``n`` says which.
* **Two files, one truth** (:meth:`ProbeReport.write`): ``results.json`` holds everything (the probed checkpoint and
  its step, the protocol, the counts per side, the files left out, every draw); ``results.tsv`` is one row per
  feature set x method x budget (mean, std, n draws, fit size, test size) for a spreadsheet or a LaTeX table. Both
  are written whole to ``.tmp`` names and renamed into place, after the last fit: a stopped probe leaves none.
  Accuracies are fractions in both files (0.9306), percentages on the console.
* **Console tables** (:meth:`ProbeReport.table`): one per label budget, rows = methods, columns = feature sets as
  ``mean ± std`` in %, fixed width, so the columns of every budget line up.
* **Progress** (:class:`Progress`) goes to stderr: a tqdm bar with an ETA on a terminal; elsewhere (a log file, a
  pipe, a test) one plain line at most every 30 s and one when done, so logs stay short and readable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

TITLES = {"pretrained": "pretrained", "random_init": "random init", "raw_pixels": "raw pixels"}
"""Column titles of the feature sets, in column order."""
SCHEMA_VERSION = 1


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


@dataclass
class Cell:
    """One feature set x method x label budget (0 = all labels) and its draws: ``{"draw", "label_seed" (None: all
    labels), "train_seed" (attentive; else None), "fit", "accuracy"}``."""

    features: str
    method: str
    budget: int
    draws: list[dict] = field(default_factory=list)

    @property
    def accuracies(self) -> list[float]:
        return [d["accuracy"] for d in self.draws]

    @property
    def mean(self) -> float:
        return mean_std(self.accuracies)[0]

    @property
    def std(self) -> float:
        return mean_std(self.accuracies)[1]

    def to_json(self) -> dict:
        return {"features": self.features, "method": self.method, "labels_per_class": self.budget,
                "n": len(self.draws), "mean": self.mean, "std": self.std, "fit": self.draws[0]["fit"],
                "draws": self.draws}


@dataclass
class Budget:
    """A label budget as scored: ``fit`` samples per draw (every draw has as many), ``capped`` classes with fewer
    fit samples than the budget (all of theirs are taken), ``classes`` on the fit side; ``skipped``: why it was not
    scored (e.g. the same as all labels), else empty."""

    labels_per_class: int
    fit: int
    test: int
    draws: int
    capped: int = 0
    classes: int = 0
    skipped: str = ""

    def title(self) -> str:
        b = self.labels_per_class
        if b == 0:
            return f"all labels: {self.fit} fit, {self.test} test"
        what = f"{b} label{'s' if b != 1 else ''} per class: {self.fit} fit, {self.test} test, {self.draws} draw" + \
            ("s" if self.draws != 1 else "")
        if self.capped:
            what += f" ({self.capped} of {self.classes} classes have fewer: all of theirs)"
        return what


@dataclass
class ProbeReport:
    """Everything one ``vmim probe`` measured. ``info``: the JSON header (checkpoint, protocol, data counts, files
    left out), written as is; ``feature_sets`` and ``methods`` in column and row order."""

    info: dict
    feature_sets: list[str]
    methods: list[str]
    budgets: list[Budget] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """``{"json": path, "tsv": path}`` once written."""

    def cell(self, features: str, method: str, budget: int) -> Cell:
        return next(c for c in self.cells if (c.features, c.method, c.budget) == (features, method, budget))

    @property
    def scored(self) -> list[Budget]:
        return [b for b in self.budgets if not b.skipped]

    # -- compatibility with the single-budget result of earlier versions --------------------------------------------

    @property
    def _headline(self) -> Budget:
        """The budget with the most labels (all labels when scored)."""
        return max(self.scored, key=lambda b: (b.labels_per_class == 0, b.labels_per_class))

    @property
    def accuracy(self) -> dict[str, dict[str, float]]:
        """``{feature set: {method: mean accuracy}}`` at the budget with the most labels."""
        b = self._headline.labels_per_class
        return {fs: {m: self.cell(fs, m, b).mean for m in self.methods} for fs in self.feature_sets}

    @property
    def fit(self) -> int:
        return self._headline.fit

    @property
    def test(self) -> int:
        return self._headline.test

    # -- console ----------------------------------------------------------------------------------------------------

    def table(self, budget: Budget) -> list[str]:
        """The budget's title, a header and one row per method: ``mean ± std`` in % per feature set."""
        width = max(15, *(len(TITLES[f]) + 2 for f in self.feature_sets))
        rows = [budget.title(),
                "  " + f"{'method':<10}" + "".join(f"{TITLES[f]:<{width}}" for f in self.feature_sets).rstrip()]
        for method in self.methods:
            cells = [self.cell(f, method, budget.labels_per_class) for f in self.feature_sets]
            rows.append("  " + f"{method:<10}" + "".join(f"{format_cell(c):<{width}}" for c in cells).rstrip())
        return rows

    def lines(self) -> list[str]:
        """Every table, then the notes (skipped budgets, files left out)."""
        out = []
        for budget in self.budgets:
            out += [budget.skipped] if budget.skipped else self.table(budget)
        return out + self.notes()

    def notes(self) -> list[str]:
        out = ["top-1 accuracy in %, mean ± sample std over label draws" +
               ("; the attentive probe's draws also differ in training seed" if "attentive" in self.methods else "")]
        left_out = self.info.get("left_out", [])
        if left_out:
            n = len(left_out)
            out.append(f"{n} file{'s' if n > 1 else ''} failed to load and left out: accuracies over the files that "
                       "loaded")
        return out

    # -- files ------------------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"version": SCHEMA_VERSION, **self.info, "feature_sets": self.feature_sets, "methods": self.methods,
                "budgets": [vars(b) for b in self.budgets], "results": [c.to_json() for c in self.cells]}

    def tsv(self) -> str:
        header = "features\tmethod\tlabels_per_class\tmean\tstd\tn\tfit\ttest"
        rows = [header]
        for b in self.scored:
            for f in self.feature_sets:
                for m in self.methods:
                    c = self.cell(f, m, b.labels_per_class)
                    rows.append(f"{f}\t{m}\t{b.labels_per_class}\t{c.mean:.6f}\t{c.std:.6f}\t{len(c.draws)}\t"
                                f"{c.draws[0]['fit']}\t{b.test}")
        return "\n".join(rows) + "\n"

    def write(self, folder: str | Path) -> dict[str, str]:
        """``<folder>/results.json`` and ``results.tsv``, each renamed into place whole; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.json", json.dumps(self.to_json(), indent=1) + "\n"), ("results.tsv", self.tsv())):
            tmp = folder / f"{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, folder / name)
        self.files = {"json": str(folder / "results.json"), "tsv": str(folder / "results.tsv")}
        return self.files


def format_cell(cell: Cell) -> str:
    """``"93.06 ± 1.20"`` (%), or ``"93.06"`` for one draw."""
    mean, std = cell.mean * 100, cell.std * 100
    return f"{mean:.2f} ± {std:.2f}" if len(cell.draws) > 1 else f"{mean:.2f}"


def read_results(folder: str | Path) -> dict[str, Any]:
    """``results.json`` of a probe folder, as written."""
    return json.loads((Path(folder) / "results.json").read_text())


class Progress:
    """Counts finished work on ``stream`` (stderr): a tqdm bar with rate and ETA on a terminal, else a plain line
    ``desc: done/total (pct), elapsed, ETA`` at most every ``every_s`` seconds and once at the end.
    :meth:`write` prints a line to stdout without breaking the bar."""

    def __init__(self, total: int, desc: str, unit: str = "it", stream: TextIO | None = None, every_s: float = 30.0,
                 tty: bool | None = None):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done, self.start, self.last = 0, time.monotonic(), time.monotonic()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every_s and self.done < self.total:
            self.last = time.monotonic()
            print(self._line(), file=self.stream, flush=True)

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({self.done / max(1, self.total):.0%}), "
                f"{_duration(elapsed)}" + (f", about {_duration(left)} left" if self.done < self.total else ""))

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self, summary: bool = True) -> float:
        """Ends the bar (a terminal) and prints the last line (``summary``: not after an error or a stop); returns
        the seconds since the start."""
        elapsed = time.monotonic() - self.start
        if self.bar is not None:
            self.bar.close()
        if self.total and summary:
            print(f"{self.desc}: {self.done} {self.unit} in {_duration(elapsed)}", file=self.stream, flush=True)
        return elapsed


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
