"""Explicit settings mean what they say: length-grouped batches come in a shuffled order, a request can
turn grouping off and choose what is held out, and the job shows what it did."""

from __future__ import annotations

import random

import torch

from app.ml import hyperparams
from tests.conftest import EXAMPLES
from tests.support.recorders import SAMPLERS
from tests.test_training_core import Recorder, _spec
from worker.sampling import shuffled_length_groups
from worker.training import DataFile, train


def _lengths(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([1, 2, 3, rng.randint(4, 60)]) for _ in range(count)]  # many short phrases, as SST-2


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_groups_pad_little_and_come_in_shuffled_order():
    lengths, size = _lengths(8000), 32
    order = shuffled_length_groups(lengths, size, torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(8000))  # every row once
    batches = _batches(order, size)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    shuffled = list(range(8000))
    random.Random(2).shuffle(shuffled)
    padded_random = sum(max(lengths[i] for i in b) * len(b) for b in _batches(shuffled, size))
    assert padded < 0.5 * padded_random  # grouping still saves most of the padding
    # The longest row's batch first; after it, batch lengths rise and fall in no pool-wise sorted run:
    # transformers' grouping walks down from long to short every 50 batches.
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima[0] == max(lengths)
    descents = sum(a >= b for a, b in zip(maxima[1:], maxima[2:]))
    assert 0.3 < descents / (len(maxima) - 2) < 0.8
    # The last 10% of the epoch is not the shortest rows (it was with sorted pools).
    assert sum(maxima[-25:]) / 25 > 0.5 * sum(maxima) / len(maxima)


def test_batches_are_runs_of_sorted_lengths_within_a_pool_and_a_short_one_comes_last():
    lengths, size = _lengths(1000, seed=3), 32  # 31 full batches and 8 rows
    order = shuffled_length_groups(lengths, size, torch.Generator().manual_seed(4))
    assert sorted(order) == list(range(1000))
    # The pools: the epoch's first permutation cut into 7 batches' worth (1,000 rows // (32 × 4 pools)),
    # so that a row meets other rows each epoch; within a pool the full batches are consecutive runs of its
    # sorted lengths, so no two of them overlap in length (ties aside).
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(4)).tolist()
    pool_of = {row: position // (7 * size) for position, row in enumerate(shuffled)}
    batches = _batches(order, size)
    spans: dict[int, list[tuple[int, int]]] = {}
    for batch in batches[:-1]:
        assert len({pool_of[i] for i in batch}) == 1
        spans.setdefault(pool_of[batch[0]], []).append((min(lengths[i] for i in batch), max(lengths[i] for i in batch)))
    assert len(spans) == 5
    for runs in spans.values():
        runs.sort(key=lambda span: (span[1], span[0]), reverse=True)
        assert all(shorter_max <= longer_min for (longer_min, _), (_, shorter_max) in zip(runs, runs[1:]))
    assert len(batches[-1]) == 1000 % size


def test_the_same_generator_seed_gives_the_same_epoch():
    lengths = _lengths(500)
    first = shuffled_length_groups(lengths, 16, torch.Generator().manual_seed(7))
    assert first == shuffled_length_groups(lengths, 16, torch.Generator().manual_seed(7))
    assert first != shuffled_length_groups(lengths, 16, torch.Generator().manual_seed(8))


def test_validation_split_is_the_request_s_fraction_or_none():
    assert hyperparams.holdout_rows(8000, False) == 400  # the default: 5%
    assert hyperparams.holdout_rows(20000, False) == 500  # at most 500
    assert hyperparams.holdout_rows(8000, False, 0) == 0
    assert hyperparams.holdout_rows(8000, False, 0.1) == 800  # a given fraction is not capped
    assert hyperparams.holdout_rows(8000, True, 0.1) == 0  # a validation file wins
    resolved = hyperparams.resolve_hyperparameters({"validation_split": 0, "group_by_length": False,
                                                    "batch_size": 32, "n_epochs": 1}, 8000, 512, 60)
    assert resolved["holdout_rows"] == 0 and resolved["eval_every"] is None  # nothing to evaluate on
    assert resolved["group_by_length"] is False and resolved["validation_split"] == 0
    assert hyperparams.resolve_hyperparameters({}, 8000, 512, 60)["holdout_rows"] == 400


def test_a_job_draws_its_batches_from_the_service_sampler(base_models_dir, tmp_path):
    """transformers hands the sampler a copy of the rows without their "length" column: the job must still
    use the shuffled groups (it once fell back to transformers' sorted ones unnoticed)."""
    SAMPLERS.clear()
    spec = _spec(base_models_dir, n_epochs=1)
    spec.callbacks = ["tests.support.recorders:SamplerRecorder"]
    data = DataFile(EXAMPLES / "sentiment.csv", "csv")
    train(spec, data, None, tmp_path / "model", Recorder(), progress_interval_s=0)
    assert SAMPLERS == ["ShuffledLengthGroupedSampler"]
    SAMPLERS.clear()
    spec = _spec(base_models_dir, n_epochs=1, group_by_length=False)
    spec.callbacks = ["tests.support.recorders:SamplerRecorder"]
    train(spec, data, None, tmp_path / "random", Recorder(), progress_interval_s=0)
    assert SAMPLERS and SAMPLERS[0] != "ShuffledLengthGroupedSampler"


def test_the_job_trains_on_every_row_with_random_batches_when_asked(base_models_dir, tmp_path):
    reporter = Recorder()
    spec = _spec(base_models_dir, validation_split=0, group_by_length=False, n_epochs=1)
    outcome = train(spec, DataFile(EXAMPLES / "sentiment.csv", "csv"), None, tmp_path / "model", reporter,
                    progress_interval_s=0)
    assert outcome.steps == 13  # ceil(200 / 16): all 200 rows, none held out
    assert not any("held out" in message for _, message in reporter.events)
    default = train(_spec(base_models_dir, n_epochs=1), DataFile(EXAMPLES / "sentiment.csv", "csv"), None,
                    tmp_path / "default", Recorder(), progress_interval_s=0)
    assert default.steps == 12  # ceil(190 / 16): 10 rows (5%) held out for evaluation
