"""The order rows reach the model in. Training: batches of rows of similar length (little padding) in a
shuffled order across the epoch. Evaluation: the dataset's order."""

from __future__ import annotations

from typing import Sequence

# Rows are sorted by length within pools of up to this many batches, and at least 4 pools per epoch (as
# transformers' LengthGroupedSampler): larger pools pad less; several pools let a row meet other rows
# in every epoch (with one pool, every epoch would cut the same sorted run into the same batches).
POOL_BATCHES = 50
MIN_POOLS = 4


def shuffled_length_groups(lengths: Sequence[int], batch_size: int, generator=None) -> list[int]:
    """Row indices for one epoch: rows shuffled, cut into pools of batches, each pool sorted by length and
    cut into batches, then the batches shuffled across the epoch.

    transformers' grouping builds the same pools but keeps each pool's batches in length order, so every
    50 steps the model walks from the longest rows to the shortest, and an epoch ends on its shortest rows
    (on SST-2, phrases of one or two words) while the learning rate decays to zero. With a script's
    settings on 8,000 SST-2 rows (bench/explicit_settings.py, 3 seeds) that order scored 0.31 points
    below the bare script with twice the spread; the shuffled order 0.09 below, at the same half of its
    wall time (bench/RESULTS.md).

    The batch holding the longest row goes first, so that running out of memory shows at the first step;
    a short last batch stays last, so that the data loader's batch boundaries fall on the groups."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * max(1, min(POOL_BATCHES, len(lengths) // (batch_size * MIN_POOLS)))
    batches = []
    for start in range(0, len(order), pool):
        members = sorted(order[start:start + pool], key=lambda i: lengths[i], reverse=True)
        batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return [i for batch in batches + tail for i in batch]


def service_sampling(base):
    """The trainer class ``base`` with the service's samplers."""
    from torch.utils.data import Sampler, SequentialSampler

    class ShuffledLengthGroupedSampler(Sampler):
        def __init__(self, lengths: list[int], batch_size: int):
            self.lengths, self.batch_size = lengths, batch_size

        def __len__(self) -> int:
            return len(self.lengths)

        def __iter__(self):
            # The global generator, as transformers' samplers use: seeded by the Trainer, and restored
            # from a checkpoint's RNG state on resume, so a resumed epoch replays the same order.
            return iter(shuffled_length_groups(self.lengths, self.batch_size))

    class ServiceSampling(base):
        def _get_train_sampler(self, train_dataset=None):
            # The Trainer asks with the dataset stripped of the columns the model does not take, "length"
            # among them; the rows are the same, so the lengths come from the dataset as prepared.
            prepared = self.train_dataset
            asked = train_dataset if train_dataset is not None else prepared
            if self.args.train_sampling_strategy != "group_by_length" or asked is None \
                    or "length" not in getattr(prepared, "column_names", ()) or len(prepared) != len(asked):
                return super()._get_train_sampler(train_dataset)
            # Grouped by optimiser step, as transformers groups: accumulated micro-batches share lengths.
            return ShuffledLengthGroupedSampler(list(prepared["length"]),
                                                self.args.train_batch_size * self.args.gradient_accumulation_steps)

        # transformers groups evaluation batches by length too (a shuffled order) when training does;
        # tasks that map predictions back to their rows (QA windows → examples) need the dataset's order.
        def _get_eval_sampler(self, eval_dataset):
            return SequentialSampler(eval_dataset) if eval_dataset is not None else None

    return ServiceSampling
