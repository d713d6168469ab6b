"""How fast bad input is refused: the CLI's refusals and the up-front list check, against baselines from the same run.

Issue 19 asks that a bad value, list line or path be refused in under a second, before torch is imported. This
prints, for each hostile input, the wall time of the real ``vmim`` command refusing it (median of ``--rounds``) and
its ratio to the baseline ``python -c "import vmim.cli"`` (the interpreter start that any refusal pays); and, for
the list check (:func:`vmim.preflight.check_list`) on a generated list of ``--lines`` lines, its time and its ratio
to reading and splitting the same file with plain Python. Nothing here is asserted: the tests check behaviour, this
prints figures.

    .venv/bin/python tools/bench_refusals.py [--lines 300000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo/digits.yaml")
FINETUNE = str(REPO / "configs/demo/motion_finetune.yaml")


def timed(command: list[str], rounds: int) -> tuple[float, int]:
    """(median wall seconds, exit code) of ``command`` over ``rounds`` runs."""
    times, code = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        code = subprocess.run(command, cwd=REPO, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def write_list(folder: Path, lines: int, bad_last: bool) -> Path:
    """A space list of ``lines`` entries over 400 class folders (files not on disk), the last line's label a word
    when ``bad_last``."""
    path = folder / ("bad.txt" if bad_last else "good.txt")
    with open(path, "w") as f:
        for i in range(lines):
            label = "seven" if bad_last and i == lines - 1 else str(i % 400)
            f.write(f"videos/class_{i % 400:03d}/v_{i:07d}.mp4 {label}\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=300_000, help="entries of the generated list")
    parser.add_argument("--rounds", type=int, default=5, help="runs per figure (the median is printed)")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "file").write_text("x")
        bad_list = write_list(d, args.lines, bad_last=True)
        (d / "random.pt").write_bytes(bytes(range(256)) * 16)
        subprocess.run([py, "-c", "import sys, torch; torch.save({'weights': torch.zeros(4)}, sys.argv[1])",
                        str(d / "wrong_keys.pt")], check=True)
        base, _ = timed([py, "-c", "import vmim.cli"], args.rounds)
        print(f"baseline: python -c 'import vmim.cli' {base * 1000:.0f} ms (median of {args.rounds})")
        cases = {
            "typo in a key": ["pretrain", "--config", DEMO, "model.pach_size=8"],
            "data.img_size=0": ["pretrain", "--config", DEMO, "data.img_size=0"],
            "optim.lr=inf": ["pretrain", "--config", DEMO, "optim.lr=inf"],
            "bad RandAugment spec": ["finetune", "--config", FINETUNE, "augment.rand_augment=rand-m9-x2"],
            "output_dir under a file": ["pretrain", "--config", DEMO, f"output_dir={d / 'file' / 'run'}"],
            f"word label on line {args.lines} of a list": [
                "pretrain", "--config", DEMO, "data.datasets.clips.kind=video", f"data.datasets.clips.path={bad_list}",
                "~data.datasets.digits_images", "~data.datasets.digits_clips", f"output_dir={d / 'run'}"],
            "init= random bytes": ["finetune", "--config", FINETUNE, f"init={d / 'random.pt'}",
                                   f"output_dir={d / 'run'}"],
            "init= a torch file with the wrong keys": ["finetune", "--config", FINETUNE,
                                                       f"init={d / 'wrong_keys.pt'}", f"output_dir={d / 'run'}"],
            "convert random bytes": ["convert", "--from", "videomae", str(d / "random.pt"), str(d / "out.pt")],
        }
        print(f"{'refused input':44s} {'exit':>4s} {'ms':>7s} {'x baseline':>10s}")
        for name, argv in cases.items():
            seconds, code = timed([py, "-m", "vmim.cli", *argv], args.rounds)
            print(f"{name:44s} {code:4d} {seconds * 1000:7.0f} {seconds / base:10.2f}")

        sys.path.insert(0, str(REPO))
        from vmim.preflight import check_list

        good = write_list(d, args.lines, bad_last=False)
        entry = SimpleNamespace(kind="video", format="space", path=str(good), root="")

        def plain_read() -> None:
            with open(good) as f:
                for line in f:
                    line.split()

        def best(fn) -> float:
            out = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
            return min(out)

        read_s = best(plain_read)
        check_s = best(lambda: check_list("data.datasets.clips", entry, 400, True))
        print(f"list check, {args.lines} lines, labeled, 400 classes: {check_s * 1000:.0f} ms, "
              f"{check_s / read_s:.2f}x reading and splitting the file in plain Python ({read_s * 1000:.0f} ms); "
              f"best of {args.rounds}")


if __name__ == "__main__":
    main()
