"""Known answers for DigitMotion's opt-in ``speed`` / ``hold`` options (defaults: the published demos' clips)."""

import numpy as np
import pytest
import torch

from vmim.data.digits import MOTION_DIRECTIONS, DigitMotion


def _offset(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """The torus shift (dr, dc) with np.roll(a, (dr, dc)) == b."""
    for dr in range(a.shape[0]):
        for dc in range(a.shape[1]):
            if np.array_equal(np.roll(a, (dr, dc), axis=(0, 1)), b):
                return dr, dc
    raise AssertionError("b is no shift of a")


def test_defaults_reproduce_the_published_clips():
    plain, explicit = DigitMotion("train", 32, 4), DigitMotion("train", 32, 4, speed=3, hold=2)
    assert (plain.speed, plain.hold) == (3, 2)
    for i in (0, 7, 100):
        a = plain.load(i, np.random.default_rng((5, i)))
        b = explicit.load(i, np.random.default_rng((5, i)))
        assert a[1] == b[1] and torch.equal(a[0], b[0])


@pytest.mark.parametrize("speed,hold,frames", [(8, 2, 4), (6, 1, 4), (5, 4, 8)])
def test_position_in_frame_t_is_start_plus_steps_on_the_torus(speed, hold, frames):
    source = DigitMotion("test", 32, frames, in_chans=1, speed=speed, hold=hold)
    for i in range(12):
        clip, label = source.load(i, np.random.default_rng(i))
        assert label == int(source.labels[i])
        x = clip[0].numpy().astype(np.int64)
        step = np.array(MOTION_DIRECTIONS[label]) * speed
        for t in range(frames):
            want = tuple(int(v) % 32 for v in (t // hold) * step)
            assert _offset(x[0], x[t]) == want, (i, t)


def test_labels_and_starts_do_not_depend_on_the_options():
    a, b = DigitMotion("train", 32, 4), DigitMotion("train", 32, 4, speed=8, hold=1)
    assert np.array_equal(a.labels, b.labels)
    for i in (3, 50):  # same start: frame 0 is the same image
        assert torch.equal(a.load(i, np.random.default_rng(i))[0][:, 0], b.load(i, np.random.default_rng(i))[0][:, 0])


@pytest.mark.parametrize("kwargs", [{"speed": 0}, {"speed": 16}, {"speed": 32}, {"hold": 0}])
def test_rejects_degenerate_options(kwargs):
    with pytest.raises(ValueError):
        DigitMotion("train", 32, 4, **kwargs)


def test_dataset_config_passes_speed_and_hold_to_the_clips():
    from vmim.config import load_config
    from vmim.data import build_source

    cfg = load_config(None, ["targets.pixel.weight=1", "data.img_size=32", "data.num_frames=4",
                             "data.datasets.m.kind=digits_motion", "data.datasets.m.speed=8", "data.datasets.m.hold=1"])
    source, _, _ = build_source("m", cfg.data.datasets["m"], cfg.data, 3)
    assert (source.speed, source.hold) == (8, 1)
    plain_cfg = load_config(None, ["targets.pixel.weight=1", "data.datasets.m.kind=digits_motion"])
    plain, _, _ = build_source("m", plain_cfg.data.datasets["m"], cfg.data, 3)
    assert (plain.speed, plain.hold) == (DigitMotion.speed, DigitMotion.hold) == (3, 2)
