"""Probes: how much do frozen features know? Linear and k-NN classifiers on a backbone's pooled features.

``vmim probe --config FILE`` takes a fine-tuning config (``task: finetune``): features of ``data.datasets`` (fit) and
``eval.datasets`` (score) come from ``init``'s backbone through the evaluation transform (``eval.val_views`` x
``eval.val_crops`` fixed views, averaged; no random crop or flip), and the same architecture at random init (seed
``train.seed``) is probed alongside, so the difference is what the weights add. ``vmim probe RUN_DIR`` is the case of
a pretraining run on the built-in digits: fit on the train split's centred digit images, score on the test split.

* linear: standardized features, L2 logistic regression (sklearn, ``probe.C``);
* knn: cosine similarity, the ``probe.knn_k`` nearest fit samples vote weighted by similarity (DINO's probe without
  the temperature);
* ``probe.labels_per_class`` > 0 fits on that many samples per class, drawn ``probe.seeds`` times; the figures are
  the mean over the draws (low-label curves).

Bad data and stop signals as in training (issue 19):

* decoding is isolated as training's is (``data.decode_isolation``, ``data.decode_timeout_s``): a decoder stuck in C
  is killed after the timeout instead of hanging the probe;
* a file that fails to load is **left out**, reported once on stdout (one line per file), remembered (the second
  model's pass does not open it again) and counted by one :class:`~vmim.data.bad_files.BadFileMonitor` over every
  fit and test dataset (named by config key); past ``data.max_bad_fraction`` the probe stops with TooManyBadFiles
  (exit 1). Left out rather than counted as a miss (as ``vmim eval`` does): a probe has no prediction for a sample it
  never saw on the fit side, and both sides are the same files for both models, so the comparison stays fair; the
  result says how many were left out and that the accuracies are over the files that loaded;
* SIGTERM / SIGUSR2 stop the feature extraction after the current batch, and set-up and the classifier fits at
  once (nothing is written, so nothing is lost): :class:`~vmim.engine.preemption.Interrupted`, one line, exit
  128 + the signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .preemption import StopSignals
from .probe_features import extract_features, per_class_subset


def linear_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, C: float = 1.0
                 ) -> float:
    """Test accuracy of an L2 logistic regression on standardized features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(x_fit, y_fit)
    return float(clf.score(x_test, y_test))


def knn_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, k: int = 20) -> float:
    """Test accuracy of a similarity-weighted k-NN vote under cosine similarity."""
    def unit(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).float()
        return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)

    sims = unit(x_test) @ unit(x_fit).T  # (n_test, n_fit)
    k = min(k, sims.shape[1])
    top, idx = sims.topk(k, dim=1)
    classes = int(max(y_fit.max(), y_test.max())) + 1
    votes = torch.zeros(len(x_test), classes).scatter_add_(1, torch.from_numpy(y_fit)[idx], top.clamp_min(0))
    return float((votes.argmax(dim=1).numpy() == y_test).mean())


def score_features(fit: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], probe_cfg
                   ) -> dict[str, float]:
    """{method: accuracy} per ``probe_cfg`` (methods, knn_k, C, labels_per_class, seeds)."""
    (x_fit, y_fit), (x_test, y_test) = fit, test
    draws = [np.arange(len(y_fit))]
    if probe_cfg.labels_per_class:
        draws = [per_class_subset(y_fit, probe_cfg.labels_per_class, seed) for seed in range(probe_cfg.seeds)]
    out = {}
    for method in (m for m in probe_cfg.methods if m != "attentive"):  # attentive: trained on tokens, below
        accs = [linear_probe(x_fit[i], y_fit[i], x_test, y_test, probe_cfg.C) if method == "linear"
                else knn_probe(x_fit[i], y_fit[i], x_test, y_test, probe_cfg.knn_k) for i in draws]
        out[method] = float(np.mean(accs))
    return out


@dataclass
class ProbeResult:
    """Accuracies by weights ("pretrained", "random_init") and method; ``fit``: samples a classifier is fit on (per
    draw, with a label budget); ``test``: samples scored."""

    accuracy: dict[str, dict[str, float]]
    fit: int
    test: int
    skipped: int = 0
    """Files that failed to load and were left out (fit and test together): the accuracies are over the rest."""

    def lines(self, labels_per_class: int = 0) -> list[str]:
        """One line per method, the linear one last: ``probe top1 X%`` (+ the random-init figure, + how many files
        were left out when some failed to load)."""
        budget = f", {labels_per_class} labels per class" if labels_per_class else ""
        skipped = (f"{self.skipped} file{'s' if self.skipped > 1 else ''} failed to load and left out: accuracies "
                   f"over the files that loaded") if self.skipped else ""
        out = []
        for method in sorted(self.accuracy["pretrained"], key=lambda m: m == "linear"):
            name = "probe" if method == "linear" else f"{method} probe"
            line = f"{name} top1 {self.accuracy['pretrained'][method]:.2%}"
            if "random_init" in self.accuracy:
                line += f" (random init {self.accuracy['random_init'][method]:.2%}; {self.fit} fit, {self.test} test" \
                        f"{budget}{'; ' + skipped if skipped else ''})"
            elif skipped:
                line += f" ({skipped})"
            out.append(line)
        return out


def probe(cfg) -> ProbeResult:
    """Probe ``cfg.init``'s backbone (and a random init of it) per a :class:`~vmim.config.FinetuneConfig`.

    Raises:
        TooManyBadFiles: more than ``data.max_bad_fraction`` of a dataset's files failed to load.
        Interrupted: a stop signal arrived (see the module docstring).
    """
    from ..data import build_sources
    from ..data.bad_files import BadFileMonitor
    from ..meta_arch.classification import build_classification
    from ..models.loading import load_init

    with StopSignals(immediate="probe set-up") as stop:
        fit_sources = build_sources(cfg.data.datasets, cfg.data, cfg.model.in_chans)
        test_sources = build_sources(cfg.eval.datasets, cfg.data, cfg.model.in_chans)
        if not test_sources:
            from ..config import ConfigError

            raise ConfigError("eval.datasets", "names no dataset for the probe to score on")
        sides = {"data.datasets": fit_sources, "eval.datasets": test_sources}
        keyed = [(f"{side}.{name}", source, listed, missing)
                 for side, built in sides.items() for name, source, listed, missing in built]
        monitor = BadFileMonitor([k[0] for k in keyed], [k[2] for k in keyed], [k[3] for k in keyed],
                                 cfg.data.max_bad_fraction, action="left out",
                                 report=lambda line: print(line, flush=True))
        monitor.check_all()
        models = {}
        if cfg.probe.compare_random_init:  # the backbone is the first draw after seeding: the same weights for a seed
            torch.manual_seed(cfg.train.seed)
            models["random_init"] = build_classification(cfg, 1)
        models["pretrained"] = build_classification(cfg, 1)
        if cfg.init:
            load_init(models["pretrained"].backbone, cfg.init, cfg.model)
        accuracy, counts = {}, (0, 0)
        for key, model in sorted(models.items()):  # "pretrained" first
            stop.immediate = None  # extraction: honoured after the current batch
            fit, test = (_features_of(model, keyed, side, cfg, monitor, stop) for side in sides)
            stop.immediate = "the probe's classifier fits"
            budget = cfg.probe.labels_per_class
            counts = (len(per_class_subset(fit[1], budget, 0)) if budget else len(fit[1]), len(test[1]))
            accuracy[key] = score_features(fit, test, cfg.probe)
            if "attentive" in cfg.probe.methods:
                from .attentive_probe import score_tokens, tokens_of

                stop.immediate = None
                fit_t, test_t = (tokens_of(model, keyed, side, cfg, monitor, stop) for side in sides)
                stop.immediate = "the probe's classifier fits"
                accuracy[key].update(score_tokens(fit_t, test_t, cfg.probe, seed=cfg.train.seed))
    # a file that failed for the first model is known bad for the second: both saw the same files
    skipped = sum(monitor.num_bad(d) for d in range(len(keyed)))
    return ProbeResult(accuracy, *counts, skipped=skipped)


def _features_of(model, keyed: list, side: str, cfg, monitor, stop: StopSignals) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every source of ``side`` ("data.datasets" / "eval.datasets") in ``keyed``
    (key, source, ...), concatenated."""
    e, d = cfg.eval, cfg.data
    parts = [extract_features(model, source, e.val_views, e.val_crops, e.short_side, e.batch_size * 8,
                              d.num_workers, decode_timeout_s=d.decode_timeout_s, isolate=d.decode_isolation,
                              monitor=monitor, dataset=i, stop=stop)
             for i, (key, source, *_) in enumerate(keyed) if key.startswith(side + ".")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def probe_config_for_pretraining_run(run_cfg, init: str, overrides: list[str] = ()):
    """The probe of ``vmim probe RUN_DIR``: the run's backbone and input statistics, fit on the built-in digits' train
    split (centred images), scored on their test split; linear only."""
    import dataclasses

    from ..config import apply_overrides, build_config

    d = run_cfg.data
    raw = {"task": "finetune", "init": init, "model": dataclasses.asdict(run_cfg.model),
           "probe": {"methods": ["linear"]}, "train": {"seed": run_cfg.train.seed},
           "data": {"img_size": d.img_size, "num_frames": d.num_frames, "mean": list(d.mean), "std": list(d.std),
                    "num_workers": 0, "datasets": {"digits": {"kind": "digits_images", "split": "train"}}},
           "eval": {"datasets": {"digits": {"kind": "digits_images", "split": "test"}}}}
    return build_config(apply_overrides(raw, list(overrides)))
