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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler



@torch.no_grad()
def extract_features(model, source, views: int = 1, crops: int = 1, short_side: int = 0, batch_size: int = 64,
                     num_workers: int = 0, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(n, D) pooled features (mean over the V = views x crops evaluation views) and (n,) labels of every sample of
    ``source`` that loads; ``model.features`` maps uint8 (N, C, T, S, S) to (N, D).

    Raises:
        RuntimeError: a sample failed to load (a probe over a silently smaller set would not be comparable).
    """
    from ..data.eval_views import build_test_loader

    model.eval()
    loader = build_test_loader(source, views, crops, short_side, batch_size, num_workers, isolate=False)
    feats, labels = [], []
    for batch in loader:
        if batch["failed"]:
            path, reason = batch["failed"][0]
            raise RuntimeError(f"probe: {path} failed to load: {reason}")
        clips = batch["clips"]
        b, v = clips.shape[:2]
        out = model.features(clips.flatten(0, 1).to(device)).float().view(b, v, -1).mean(dim=1)
        feats.append(out.cpu().numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(feats), np.concatenate(labels)


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


def per_class_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` samples of each class (all of a class with fewer), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c in np.unique(labels)]))


def score_features(fit: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], probe_cfg
                   ) -> dict[str, float]:
    """{method: accuracy} per ``probe_cfg`` (methods, knn_k, C, labels_per_class, seeds)."""
    (x_fit, y_fit), (x_test, y_test) = fit, test
    draws = [np.arange(len(y_fit))]
    if probe_cfg.labels_per_class:
        draws = [per_class_subset(y_fit, probe_cfg.labels_per_class, seed) for seed in range(probe_cfg.seeds)]
    out = {}
    for method in probe_cfg.methods:
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

    def lines(self, labels_per_class: int = 0) -> list[str]:
        """One line per method, the linear one last: ``probe top1 X%`` (+ the random-init figure)."""
        budget = f", {labels_per_class} labels per class" if labels_per_class else ""
        out = []
        for method in sorted(self.accuracy["pretrained"], key=lambda m: m == "linear"):
            name = "probe" if method == "linear" else f"{method} probe"
            line = f"{name} top1 {self.accuracy['pretrained'][method]:.2%}"
            if "random_init" in self.accuracy:
                line += f" (random init {self.accuracy['random_init'][method]:.2%}; {self.fit} fit, {self.test} test" \
                        f"{budget})"
            out.append(line)
        return out


def probe(cfg) -> ProbeResult:
    """Probe ``cfg.init``'s backbone (and a random init of it) per a :class:`~vmim.finetune_config.FinetuneConfig`."""
    from ..data import build_sources
    from ..models.classifier import build_classifier
    from ..models.loading import load_init

    fit_sources = build_sources(cfg.data.datasets, cfg.data, cfg.model.in_chans)
    test_sources = build_sources(cfg.eval.datasets, cfg.data, cfg.model.in_chans)
    if not test_sources:
        from ..config import ConfigError

        raise ConfigError("eval.datasets", "names no dataset for the probe to score on")
    models = {}
    if cfg.probe.compare_random_init:  # the backbone is the first draw after seeding: the same weights for a seed
        torch.manual_seed(cfg.train.seed)
        models["random_init"] = build_classifier(cfg, 1)
    models["pretrained"] = build_classifier(cfg, 1)
    if cfg.init:
        load_init(models["pretrained"].backbone, cfg.init, cfg.model)
    accuracy, counts = {}, (0, 0)
    for key, model in sorted(models.items()):  # "pretrained" first
        fit, test = (_features_of(model, built, cfg) for built in (fit_sources, test_sources))
        budget = cfg.probe.labels_per_class
        counts = (len(per_class_subset(fit[1], budget, 0)) if budget else len(fit[1]), len(test[1]))
        accuracy[key] = score_features(fit, test, cfg.probe)
    return ProbeResult(accuracy, *counts)


def _features_of(model, built: list, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every source in ``built`` (name, source, ...), concatenated."""
    e = cfg.eval
    parts = [extract_features(model, source, e.val_views, e.val_crops, e.short_side, e.batch_size * 8,
                              cfg.data.num_workers) for _, source, *_ in built]
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
