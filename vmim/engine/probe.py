"""Linear probe on held-out labeled digits: how linearly separable are the encoder's features?

Features are the mean of the encoder's output tokens on centred, unmasked digit images; a logistic
regression is fit on the train split and scored on the test split. Run for a checkpoint and for the
same architecture at random init, the difference shows what pretraining learned.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..config import Config
from ..data import DigitImages
from ..meta_arch import MaskedModeling, build_method


@torch.no_grad()
def extract_features(model: MaskedModeling, source: DigitImages, batch_size: int = 256
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) mean-pooled encoder features and (n,) labels for every item of ``source``."""
    model.eval()
    rng = np.random.default_rng(0)
    feats, labels = [], []
    for start in range(0, len(source), batch_size):
        items = [source.load(i, rng) for i in range(start, min(start + batch_size, len(source)))]
        clips = torch.stack([clip for clip, _ in items])
        feats.append(model.features(clips).float().numpy())
        labels.extend(label for _, label in items)
    return np.concatenate(feats), np.array(labels)


def probe_accuracy(model: MaskedModeling, cfg: Config) -> float:
    """Test accuracy of a logistic regression on the model's features of the digits splits."""
    make = lambda split: DigitImages(split, cfg.data.img_size, cfg.model.in_chans, centered=True)  # noqa: E731
    x_train, y_train = extract_features(model, make("train"))
    x_test, y_test = extract_features(model, make("test"))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))  # sklearn's default C=1
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def probe_checkpoint(cfg: Config, checkpoint: dict) -> dict[str, float]:
    """Accuracy of the checkpoint's encoder and of the same encoder at random init (seed train.seed)."""
    torch.manual_seed(cfg.train.seed)
    random_init = build_method(cfg)
    trained = build_method(cfg)
    trained.load_state_dict(checkpoint["model"])
    return {"pretrained": probe_accuracy(trained, cfg), "random_init": probe_accuracy(random_init, cfg)}
