"""Packing for causal-LM fine-tuning: the examples of one batch are laid end to end in as few rows as
fit ``max_length`` (first-fit decreasing), instead of each padded to the longest. Position ids restart
at every example, and without an attention mask transformers turns those restarts into a
block-diagonal causal mask, so no example sees another. The batch still holds the same examples, so
optimiser steps mean what they meant unpacked; only the padding (often most of a batch of short
chat turns) is gone, and attention never spans more than ``max_length`` tokens."""

from __future__ import annotations

from typing import Any

IGNORE = -100


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins whose total is at most ``capacity`` (an item longer than
    ``capacity`` gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


class PackingCollator:
    """Features with ``input_ids`` and ``labels`` → packed rows of ``input_ids``, ``labels`` and
    ``position_ids``. Each example's first label is ignored: it would be predicted from the end of
    the example before it. The trailing padding of a row forms a segment of its own, so real tokens
    (which only look back) never attend to it."""

    def __init__(self, pad_token_id: int, max_length: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.max_length, self.multiple = pad_token_id, max_length, pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = []
        for members in first_fit_decreasing([len(f["input_ids"]) for f in features], self.max_length):
            ids, labels, positions = [], [], []
            for i in members:
                example = features[i]
                ids += list(example["input_ids"])
                labels += [IGNORE] + list(example["labels"])[1:]
                positions += range(len(example["input_ids"]))
            rows.append((ids, labels, positions))
        width = max(len(ids) for ids, _, _ in rows)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        batch: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
        for ids, labels, positions in rows:
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(labels + [IGNORE] * pad)
            batch["position_ids"].append(list(positions) + list(range(pad)))
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def packing_works(model, vocab_size: int) -> bool:
    """Whether this architecture keeps packed examples apart: two short sequences run packed in one
    row must give the logits they give alone. Architectures that ignore position-id restarts would
    silently attend across examples; for them packing is turned off."""
    import torch

    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        first = torch.randint(1, max(2, vocab_size), (1, 7), generator=generator)
        second = torch.randint(1, max(2, vocab_size), (1, 5), generator=generator)
        device = next(model.parameters()).device
        with torch.no_grad():
            # A key/value cache turns packed-sequence detection off; training runs without one.
            alone = [model(input_ids=s.to(device), use_cache=False).logits for s in (first, second)]
            positions = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
            packed = model(input_ids=torch.cat([first, second], dim=1).to(device),
                           position_ids=positions.to(device), use_cache=False).logits
        return bool(torch.allclose(torch.cat(alone, dim=1).float(), packed.float(), atol=1e-3, rtol=1e-3))
    except Exception:  # an architecture that refuses position_ids cannot pack
        return False
    finally:
        model.train(was_training)
