"""Attentive probe (V-JEPA's evaluation): a learned query pools a frozen backbone's tokens, then a linear classifier.

Where :mod:`vmim.engine.probe` fits sklearn classifiers on pooled ``(n, D)`` features, this probe needs the tokens
``(n, N, D)``. Decisions:

* **Extraction is the probe's**: the tokens ``backbone(x).tokens`` (class token dropped) come out of the same pass
  as the pooled features (:class:`~vmim.engine.probe_features.ModelFeatures` with ``tokens``;
  :func:`~vmim.engine.probe_features.extract`), so loading, evaluation views, bad files (left out, counted,
  remembered) and stop signals are the probe's own, and each file is decoded once. Several evaluation views are
  averaged token by token (position by position), as the probe averages pooled features; the reference instead
  concatenates the tokens of its 8 segments x 3 views and attends across them (``attend_across_segments``), which
  costs V times the memory here.
* **Tokens are extracted once**, then :class:`~vmim.models.attentive_pool.AttentivePool` + a linear layer are trained
  on them with AdamW, mini-batches drawn from a seeded generator, cosine lr to 0, no augmentation. The reference
  trains 20 epochs through the frozen encoder with training augmentation (``configs/evals/vitl16_k400_16x8x3.yaml``:
  lr 1e-3, wd 0.01, batch 4 x 64 GPUs); storing ``n x N x D`` floats suits the probe's evaluation sets (digits, UCF /
  HMDB at low resolution), not Kinetics at 16 x 224^2 (a streaming variant would run the frozen backbone per step).
* **Long enough, and standardized.** The reference's 20 epochs are ~ 5 M samples of Kinetics under augmentation;
  on a small evaluation set without augmentation the query, the block and the head need many passes: on the 1438
  motion clips (vit_tiny tokens at random init, 4 classes) 300 steps of 64 (13 passes) scored 28.7 % (below the
  mean-pooled linear probe's 33.7 %), 1000 steps 39.8 %, 2000 steps 45.1 % (train 93 %: overfitting from there).
  The probe (:mod:`vmim.engine.probe`) therefore standardizes each channel by its fit-token mean and std, as the linear
  probe's StandardScaler does (kept in the model as buffers, so test tokens get the same): 1000 steps then score
  46.5 %. :func:`fit_probe` leaves it off unless asked (``standardize``), its behaviour before.
* **Frozen means frozen**: the tokens are plain tensors without grad, so gradients reach only the pool and the head.
* **Deterministic**: the probe's modules are initialised under ``seed`` in a forked RNG (the global RNG is left
  alone) and the mini-batch order comes from a generator seeded with it.
* Weight decay on matrices and the query, not on biases and norms (the reference's param groups).
* ``pooling="mean"`` trains the same linear head on the mean token, the control that shows what attending adds.
  The pool comes from the ``poolings`` registry (:mod:`vmim.meta_arch.pooling_schema`) through its view over grid
  tokens alone (:data:`vmim.models.pooling.POOLINGS`): the extracted tokens hold no class token, so ``cls`` is not
  offered here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.pooling import build_pooling
from .probe_features import extract


class TokenFeatures(nn.Module):
    """Wraps a :class:`~vmim.meta_arch.classification.Classification` so that ``features(clip)`` returns its
    backbone's grid tokens, flattened to ``(B, N * D)``; ``token_shape`` is ``(N, D)`` after the first call. For
    code that wants tokens from a ``features`` method; the probe itself asks
    :class:`~vmim.engine.probe_features.ModelFeatures` for ``"tokens"``."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.token_shape: tuple[int, int] | None = None

    def tokens(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B, C, T, H, W)`` -> ``(B, N, D)`` tokens after the backbone's final norm."""
        return self.classifier.tokens(clip)

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(clip)
        self.token_shape = tuple(tokens.shape[1:])
        return tokens.flatten(1)


def extract_tokens(classifier: nn.Module, source, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(n, N, D)`` tokens (averaged over the evaluation views) and ``(n,)`` labels of every sample of ``source`` that
    loads; ``kwargs`` are :func:`~vmim.engine.probe_features.extract`'s."""
    classifier.eval()
    feats, labels, _ = extract({"model": lambda clip: {"tokens": classifier.tokens(clip)}}, source, **kwargs)
    return feats["model"]["tokens"], labels


class PooledClassifier(nn.Module):
    """Per-channel standardization (fixed buffers), a token pooling and a linear layer: ``(B, N, D)`` -> logits
    ``(B, K)``. ``shift`` / ``scale`` ``(D,)``: the fit tokens' channel means and stds (None: 0 and 1)."""

    def __init__(self, pool: nn.Module, dim: int, num_classes: int, shift: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim) if shift is None else shift.detach().clone())
        self.register_buffer("scale", torch.ones(dim) if scale is None else scale.detach().clone())
        self.pool = pool
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool((tokens - self.shift) / self.scale))


def fit_probe(tokens: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int,
              pooling: str = "attentive", steps: int = 1000, lr: float = 1e-3, weight_decay: float = 0.01,
              heads: int = 0, batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu",
              standardize: bool = False) -> PooledClassifier:
    """Train a pooling + linear classifier on frozen ``(n, N, D)`` tokens with AdamW (cosine lr from ``lr`` to 0 over
    ``steps``, mini-batches of ``batch_size`` drawn without replacement per pass); returns it in eval mode.
    ``standardize``: each channel is shifted and scaled by its mean and std over all fit tokens (kept in the model,
    so test tokens get the same), as the linear probe's StandardScaler does to its pooled features."""
    x = torch.as_tensor(tokens, dtype=torch.float32).detach()
    y = torch.as_tensor(labels, dtype=torch.long)
    n, _, dim = x.shape
    shift = scale = None
    if standardize:
        flat = x.reshape(-1, dim)
        shift, scale = flat.mean(dim=0), flat.std(dim=0, unbiased=False).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PooledClassifier(build_pooling(pooling, dim, heads), dim, num_classes, shift, scale).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr)
    order = torch.Generator().manual_seed(seed)
    batch = min(batch_size, n)
    perm, cursor = torch.randperm(n, generator=order), 0
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        if cursor + batch > n:
            perm, cursor = torch.randperm(n, generator=order), 0
        idx = perm[cursor:cursor + batch]
        cursor += batch
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, tokens: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(n, N, D)`` tokens."""
    x = torch.as_tensor(tokens, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    device = next(model.parameters()).device
    hits = sum(int((model(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / len(x)


def attentive_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                    **settings: Any) -> float:
    """Test top-1 of :func:`fit_probe` (``settings``: its keywords) trained on the fit tokens."""
    num_classes = int(max(np.max(y_fit), np.max(y_test))) + 1
    return accuracy(fit_probe(x_fit, y_fit, num_classes, **settings), x_test, y_test)
