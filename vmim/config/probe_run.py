"""The fine-tuning config that ``vmim probe RUN`` probes with, built from the run's own config: the model comes from
the run, so probing a run on other data needs no second config file. Apart from the ``probe`` schema
(:mod:`vmim.config.probe`), which the loader reads: this builds configs with the loader. Torch-free."""

from __future__ import annotations

import dataclasses
from typing import Any, List

from .loader import apply_overrides, build_config


def probe_config_for_run(run_cfg: Any, init: str, train: dict | None = None, test: dict | None = None,
                         overrides: List[str] = ()) -> Any:
    """The fine-tuning config ``vmim probe RUN`` probes with: the run's model (a pretraining run's encoder or a
    fine-tuning run's backbone, weights ``init``), its input statistics (img_size, num_frames, mean, std), its seed and
    its data settings (workers, decoding, bad-file threshold), fit on ``train`` (``data.datasets.train``) and scored
    on ``test`` (``eval.datasets.test``), dataset entries as :func:`vmim.data.list_entry.entry_for` makes them; without
    them the built-in digits' train and test images (in-process: no workers). The backbone pools as it was built to
    (``model.global_pool``; a fine-tuning run's ``head.pooling`` is not taken: its weights are not the backbone's).
    ``overrides`` (``probe.*``, ``eval.*``, ``data.datasets.train.stride=2``, ...) come last.

    Raises:
        ConfigError: an override names an unknown key or a bad value.
    """
    d = run_cfg.data
    if train is None or test is None:
        datasets = {"digits": {"kind": "digits_images", "split": "train"}}
        evals = {"digits": {"kind": "digits_images", "split": "test"}}
        data = {"num_workers": 0}
    else:
        datasets, evals = {"train": dict(train)}, {"test": dict(test)}
        data = {"num_workers": d.num_workers, "decode_timeout_s": d.decode_timeout_s,
                "decode_isolation": d.decode_isolation, "max_bad_fraction": d.max_bad_fraction}
    raw = {"task": "finetune", "init": init,
           "model": dataclasses.asdict(run_cfg.model), "train": {"seed": run_cfg.train.seed},
           "data": {"img_size": d.img_size, "num_frames": d.num_frames, "mean": list(d.mean), "std": list(d.std),
                    **data, "datasets": datasets},
           "eval": {"datasets": evals}}
    return build_config(apply_overrides(raw, list(overrides)))
