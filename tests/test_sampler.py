"""MixedBatchSampler and batches_per_dataset: batch mix, determinism, resume and data-parallel slicing."""

from __future__ import annotations

from collections import Counter

import pytest

from vmim.data.sampler import MixedBatchSampler, batches_per_dataset


def epoch(sampler: MixedBatchSampler, e: int, start_batch: int = 0) -> list[list[tuple[int, int, int]]]:
    sampler.set_epoch(e, start_batch)
    return list(sampler)


def dataset_of(batch: list[tuple[int, int, int]]) -> int:
    ids = {d for d, _, _ in batch}
    assert len(ids) == 1, f"batch mixes datasets {ids}"
    return ids.pop()


# ----------------------------------------------------------------------------------------------------
# batches_per_dataset
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes, weights, global_batch, want", [
    ([40, 24], [1.0, 1.0], 4, [10, 6]),
    ([100, 60], [1.0, 0.5], 8, [12, 3]),  # 100 / 8 = 12.5 -> 12; 60 * 0.5 / 8 = 3.75 -> 3 (whole batches)
    ([30, 30], [2.0, 1.0], 6, [10, 5]),  # weight 2 = two passes
    ([1000, 3], [1.0, 1.0], 8, [125, 1]),  # a tiny dataset still gets one batch
])
def test_batches_per_dataset_one_weighted_pass(sizes, weights, global_batch, want):
    assert batches_per_dataset(sizes, weights, global_batch) == want


@pytest.mark.parametrize("sizes, weights, global_batch, total, want", [
    # shares 12.5 and 3.75 -> x 20 / 16.25 = 15.38, 4.62 -> floors 15, 4 (19) -> +1 to the larger remainder .62
    ([100, 60], [1.0, 0.5], 8, 20, [15, 5]),
    # shares 50, 30, 20 (x 1) -> x 7 / 100 = 3.5, 2.1, 1.4 -> 3, 2, 1 (6) -> +1 to remainder .5
    ([50, 30, 20], [1.0, 1.0, 1.0], 1, 7, [4, 2, 1]),
    # x 9 / 100 = 4.5, 2.7, 1.8 -> 4, 2, 1 (7) -> +1 to .8 and .7
    ([50, 30, 20], [1.0, 1.0, 1.0], 1, 9, [4, 3, 2]),
    # weights count: shares 50 x 0.2 = 10, 30, 20 -> x 12 / 60 = 2, 6, 4 exactly
    ([50, 30, 20], [0.2, 1.0, 1.0], 1, 12, [2, 6, 4]),
    # longer than one pass: shares 10, 6 -> x 50 / 16 = 31.25, 18.75 -> 31, 18 (49) -> +1 to .75
    ([40, 24], [1.0, 1.0], 4, 50, [31, 19]),
])
def test_batches_per_dataset_fixed_total_largest_remainders(sizes, weights, global_batch, total, want):
    counts = batches_per_dataset(sizes, weights, global_batch, total)
    assert sum(counts) == total
    assert counts == want


def test_sampler_epoch_follows_counts():
    sampler = MixedBatchSampler([100, 60], [1.0, 0.5], batch_size=4, world_size=2, rank=0, seed=3)
    assert sampler.counts == [12, 3] and len(sampler) == 15
    batches = epoch(sampler, 0)
    assert len(batches) == 15
    assert Counter(dataset_of(b) for b in batches) == {0: 12, 1: 3}

    fixed = MixedBatchSampler([100, 60], [1.0, 0.5], batch_size=4, world_size=2, rank=0, seed=3,
                              batches_per_epoch=20)
    batches = epoch(fixed, 0)
    assert len(fixed) == len(batches) == 20
    assert Counter(dataset_of(b) for b in batches) == {0: 15, 1: 5}


# ----------------------------------------------------------------------------------------------------
# Batch contents
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batches_per_epoch", [None, 37])
def test_batches_homogeneous_and_full(batches_per_epoch):
    sizes = [40, 24, 9]
    sampler = MixedBatchSampler(sizes, [1.0, 1.0, 2.0], batch_size=4, seed=1, batches_per_epoch=batches_per_epoch)
    batches = epoch(sampler, 0)
    for batch in batches:
        d = dataset_of(batch)
        assert len(batch) == 4
        for dd, index, seed in batch:
            assert isinstance(index, int) and isinstance(seed, int) and isinstance(dd, int)
            assert 0 <= index < sizes[d]
    assert len({dataset_of(b) for b in batches}) == 3
    # datasets are interleaved, not run one after the other
    order = [dataset_of(b) for b in batches]
    assert sum(a != b for a, b in zip(order, order[1:])) > 2


def test_sample_seeds_differ_within_an_epoch():
    batches = epoch(MixedBatchSampler([40, 24], [1.0, 1.0], batch_size=4, seed=0), 0)
    seeds = [s for b in batches for _, _, s in b]
    assert len(set(seeds)) >= len(seeds) - 1  # 64 draws from 2^31: a collision is ~1e-6 likely


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_indices_do_not_repeat_until_dataset_exhausted(weight):
    size = 20
    sampler = MixedBatchSampler([size, 13], [weight, 1.0], batch_size=4, seed=7)
    drawn = [i for b in epoch(sampler, 0) if dataset_of(b) == 0 for _, i, _ in b]
    assert len(drawn) == 4 * int(size * weight / 4)
    for start in range(0, len(drawn), size):  # each pass is a permutation (the last one possibly cut short)
        chunk = drawn[start:start + size]
        assert len(set(chunk)) == len(chunk), f"repeat within pass starting at {start}: {chunk}"
    if weight == 1.0:
        assert len(set(drawn)) == 20  # 20 = 5 full batches: the whole dataset, once


# ----------------------------------------------------------------------------------------------------
# Determinism and resume
# ----------------------------------------------------------------------------------------------------


def make(seed: int = 0, **kwargs) -> MixedBatchSampler:
    return MixedBatchSampler([40, 24, 12], [1.0, 1.0, 0.5], batch_size=4, seed=seed, **kwargs)


def test_same_seed_and_epoch_same_batches():
    assert epoch(make(), 3) == epoch(make(), 3)
    sampler = make()
    first = epoch(sampler, 3)
    epoch(sampler, 4)
    assert epoch(sampler, 3) == first  # no hidden state carried between epochs


def test_different_epoch_or_seed_different_batches():
    e0, e1 = epoch(make(), 0), epoch(make(), 1)
    assert e0 != e1
    assert [dataset_of(b) for b in e0] != [dataset_of(b) for b in e1]  # the dataset order changes too
    assert epoch(make(seed=1), 0) != e0


@pytest.mark.parametrize("k", [0, 1, 7, 16, 17])
def test_resume_yields_tail_of_epoch(k):
    sampler = make(batches_per_epoch=17)
    full = epoch(sampler, 2)
    assert len(full) == 17
    assert epoch(sampler, 2, start_batch=k) == full[k:]
    assert epoch(make(batches_per_epoch=17), 2, start_batch=k) == full[k:]  # also in a fresh process
    assert epoch(sampler, 2) == full  # start_batch applies to that call only


# ----------------------------------------------------------------------------------------------------
# Data parallel
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batches_per_epoch", [None, 11])
def test_ranks_take_disjoint_halves_of_the_global_batch(batches_per_epoch):
    kwargs = dict(sizes=[40, 24, 12], weights=[1.0, 1.0, 0.5], seed=9, batches_per_epoch=batches_per_epoch)
    r0 = epoch(MixedBatchSampler(batch_size=2, world_size=2, rank=0, **kwargs), 1)
    r1 = epoch(MixedBatchSampler(batch_size=2, world_size=2, rank=1, **kwargs), 1)
    single = epoch(MixedBatchSampler(batch_size=4, world_size=1, rank=0, **kwargs), 1)
    assert len(r0) == len(r1) == len(single)
    for a, b, g in zip(r0, r1, single):
        assert len(a) == len(b) == 2
        assert dataset_of(a) == dataset_of(b)  # every step, both ranks draw from the same dataset
        assert not {i for _, i, _ in a} & {i for _, i, _ in b}  # disjoint samples
        assert sorted(a + b) == sorted(g)  # together: the global batch of a single process


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_next_key_hints_the_batch_the_same_worker_fetches_next(workers):
    """The DataLoader hands batch n to worker n % workers, so a worker's next batch is n + workers (0 workers:
    n + 1); with a resume the hints follow the batches actually yielded."""
    import torch
    from torch.utils.data import DataLoader, get_worker_info

    sampler = MixedBatchSampler([20, 7], [1.0, 2.0], 4, seed=3)
    sampler.loader_workers = workers
    sampler.set_epoch(1, start_batch=2)
    batches = list(sampler)
    stride = max(1, workers)
    for n, batch in enumerate(batches):
        want = batches[n + stride][0] if n + stride < len(batches) else None
        assert batch.next_key == want, n

    class WhoFetched:  # records which worker fetched each batch, and the hint it got
        def __getitems__(self, keys):
            info = get_worker_info()
            return [(info.id if info else 0, list(keys), keys.next_key)]

    fetched = [item for item, in DataLoader(WhoFetched(), batch_sampler=sampler, num_workers=workers,
                                             collate_fn=lambda x: x, generator=torch.Generator())]
    assert [keys for _, keys, _ in fetched] == [list(b) for b in batches]
    for n, (worker, _, hint) in enumerate(fetched):  # the hinted key is the one this worker fetches next
        later = [keys for w, keys, _ in fetched[n + 1:] if w == worker]
        assert hint == (later[0][0] if later else None), n
