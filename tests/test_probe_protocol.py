"""The probe's protocol in-process (:func:`vmim.engine.probe.probe`) on small stratified slices of the built-in digit
images, with real models (``vit_test`` at its seeds' random init: the pretrained column's weights do not matter
here).

* every label budget comes from one feature extraction: each model sees every sample once, however many budgets;
* results.json holds every draw, and its means and stds (and results.tsv's) are the draws' mean and sample std;
* the raw-pixel linear probe equals a logistic regression fit here on pixels read straight from the source;
* a budget that every class meets with all its samples is all labels, scored once.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vmim.config import load_config
from vmim.engine.probe import probe
from vmim.engine.probe_results import read_results
from vmim.meta_arch.classification import Classification

TINY = [
    "task=finetune", "init=", "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2",
    "data.img_size=16", "data.num_frames=4", "data.num_workers=0", "data.decode_isolation=false",
    "data.datasets.digits.kind=digits_images", "data.datasets.digits.split=train",
    "data.datasets.digits.fraction=0.1", "eval.datasets.digits.kind=digits_images", "eval.datasets.digits.split=test",
    "eval.datasets.digits.fraction=0.25", "probe.labels_per_class=[1,5,0]", "probe.seeds=2", "probe.knn_k=5",
]
"""143 fit images (14 or 15 per class), 90 test images; budgets 1, 5 and all, two draws each."""


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One probe run, with every model's ``features`` calls counted (samples per model instance)."""
    seen: collections.Counter = collections.Counter()
    features = Classification.features

    def counting(self, clip):
        seen[id(self)] += len(clip)
        return features(self, clip)

    cfg = load_config(None, TINY)
    out = tmp_path_factory.mktemp("probe") / "probe"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Classification, "features", counting)
        report = probe(cfg, out)
    return {"cfg": cfg, "report": report, "out": out, "seen": seen}


def test_every_budget_comes_from_one_extraction(probed):
    results = read_results(probed["out"])
    fit, test = results["data"]["fit"]["samples"], results["data"]["test"]["samples"]
    assert (fit, test) == (143, 90)
    assert [b["labels_per_class"] for b in results["budgets"]] == [1, 5, 0]
    # two models (pretrained, random init), each shown every sample exactly once: not once per budget or method
    assert sorted(probed["seen"].values()) == [fit + test, fit + test]


def test_results_are_the_draws_mean_and_sample_std(probed):
    results = read_results(probed["out"])
    assert results["feature_sets"] == ["pretrained", "random_init", "raw_pixels"]
    assert len(results["results"]) == 3 * 2 * 3  # feature sets x methods x budgets
    rows = {tuple(r.split("\t")[:3]): r.split("\t")[3:]
            for r in (probed["out"] / "results.tsv").read_text().splitlines()[1:]}
    assert len(rows) == len(results["results"])
    for cell in results["results"]:
        accs = [d["accuracy"] for d in cell["draws"]]
        budget = cell["labels_per_class"]
        assert len(accs) == (1 if budget == 0 else 2) == cell["n"]  # all labels: one fit of a deterministic method
        assert [d["label_seed"] for d in cell["draws"]] == ([None] if budget == 0 else [0, 1])
        assert cell["mean"] == pytest.approx(sum(accs) / len(accs), abs=1e-12)
        expected_std = (sum((a - cell["mean"]) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0
        assert cell["std"] == pytest.approx(expected_std, abs=1e-12)
        assert all(d["fit"] == {0: 143, 1: 10, 5: 50}[budget] for d in cell["draws"])
        mean, std, n, fit, test = rows[(cell["features"], cell["method"], str(budget))]
        assert (float(mean), float(std), int(n), int(fit), int(test)) == (
            pytest.approx(cell["mean"], abs=5e-7), pytest.approx(cell["std"], abs=5e-7), cell["n"], cell["fit"], 90)
    spread = [c["std"] for c in results["results"] if c["labels_per_class"] == 1]
    assert any(s > 0 for s in spread)  # two draws of one label per class do differ somewhere


def test_raw_pixel_linear_probe_equals_a_logistic_regression_on_the_pixels(probed):
    """Pixels read here from the sources' evaluation views, scaled to [0, 1] and flattened (3 x 1 x 16 x 16 = 768
    values: under 4096, so not pooled), then sklearn: the same accuracy as the probe's raw-pixel column, with all
    labels and with the second draw of 5 labels per class."""
    from vmim.data import build_sources

    cfg = probed["cfg"]

    def pixels(datasets):
        (_, source, *_), = build_sources(datasets, cfg.data, cfg.model.in_chans)
        views = [source.test_views(i) for i in range(len(source))]
        x = np.stack([clips[0].numpy().reshape(-1).astype(np.float32) / np.float32(255) for clips, _ in views])
        return x, np.array([label for _, label in views])

    (x_fit, y_fit), (x_test, y_test) = pixels(cfg.data.datasets), pixels(cfg.eval.datasets)
    assert x_fit.shape == (143, 768)

    def logistic(rows):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe.C, max_iter=2000))
        with threadpool_limits(limits=1):  # as the probe fits: the same float sums whatever the machine's cores
            return clf.fit(x_fit[rows], y_fit[rows]).score(x_test, y_test)

    rng = np.random.default_rng(1)  # draw 1 of 5 per class: 5 of each class's indices, in a seeded permutation
    five = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y_fit == c))[:5] for c in range(10)]))
    results = {(r["labels_per_class"]): r for r in read_results(probed["out"])["results"]
               if (r["features"], r["method"]) == ("raw_pixels", "linear")}
    assert results[0]["draws"][0]["accuracy"] == pytest.approx(logistic(np.arange(len(y_fit))), abs=1e-12)
    assert results[5]["draws"][1]["accuracy"] == pytest.approx(logistic(five), abs=1e-12)
    assert read_results(probed["out"])["protocol"]["raw_pixels"] == {"max_dim": 4096, "shape": [3, 1, 16, 16]}


def test_console_tables(probed, capsys):
    report = probed["report"]
    lines = report.lines()
    assert lines[0] == "1 label per class: 10 fit, 90 test, 2 draws"
    assert lines[1] == "  method    pretrained     random init    raw pixels"
    row = lines[2]
    linear = report.cell("raw_pixels", "linear", 1)
    assert row.startswith("  linear    ") and row.endswith(f"{linear.mean * 100:.2f} ± {linear.std * 100:.2f}")
    all_labels = lines.index("all labels: 143 fit, 90 test")
    assert " ± " not in lines[all_labels + 2]  # one fit: no spread to show
    rows = [line for line in lines if line.startswith(("  linear", "  knn"))]
    assert len(rows) == 6
    for line in rows:  # every budget's columns start at the same places: 2 + 10, then every 15
        assert all(line[i - 1] == " " and line[i].isdigit() for i in (12, 27, 42)), line


def test_a_budget_every_class_meets_whole_is_all_labels(tmp_path, capsys):
    """20 per class on 14-15 per class: the same fit set as all labels, so scored once and said so."""
    cfg = load_config(None, TINY + ["probe.labels_per_class=[20,0]", "probe.methods=[knn]", "probe.baselines=[]"])
    report = probe(cfg, tmp_path)
    assert [(b.labels_per_class, bool(b.skipped)) for b in report.budgets] == [(20, True), (0, False)]
    out = capsys.readouterr().out
    assert "20 labels per class: every class has at most 15 fit samples, the same as all labels (scored once)" in out
    assert [r["labels_per_class"] for r in read_results(tmp_path)["results"]] == [0]


def test_a_config_with_a_validation_carve_fits_on_what_its_fine_tune_trains_on(tmp_path):
    """eval.val_fraction: the fit side is each training list less its carved validation set, then the ``fraction``
    subset of the rest (what the fine-tune of that config trains on), not the subset of the whole list. Checked by
    the raw-pixel linear accuracy, refit here on the rows the carve leaves for training."""
    from vmim.data import build_sources
    from vmim.data.splits import carve_indices
    from vmim.data.subset import stratified_subset

    extra = ["eval.val_fraction=0.2", "eval.val_seed=3", "data.datasets.digits.subset_seed=1",
             "probe.labels_per_class=[0]", "probe.methods=[linear]", "probe.baselines=[raw_pixels]"]
    cfg = load_config(None, TINY + extra)
    probe(cfg, tmp_path)
    whole = load_config(None, TINY + extra + ["data.datasets.digits.fraction=1.0"])
    (_, train_source, *_), = build_sources(whole.data.datasets, whole.data, whole.model.in_chans)
    (_, test_source, *_), = build_sources(whole.eval.datasets, whole.data, whole.model.in_chans)
    labels = train_source.labels
    val, rest = carve_indices(labels, 0.2, 3)
    rows = rest[stratified_subset(labels[rest], 0.1, 1)]
    assert not set(rows) & set(val)

    def pixels(source, indices):
        views = [source.test_views(int(i)) for i in indices]
        x = np.stack([clips[0].numpy().reshape(-1).astype(np.float32) / np.float32(255) for clips, _ in views])
        return x, np.array([label for _, label in views])

    (x_fit, y_fit), (x_test, y_test) = pixels(train_source, rows), pixels(test_source, range(len(test_source)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe.C, max_iter=2000))
    with threadpool_limits(limits=1):
        expected = clf.fit(x_fit, y_fit).score(x_test, y_test)
    results = read_results(tmp_path)
    assert results["data"]["fit"]["samples"] == len(rows) < 143
    (cell,) = [r for r in results["results"] if r["features"] == "raw_pixels"]
    assert cell["draws"][0]["accuracy"] == pytest.approx(expected, abs=1e-12)
