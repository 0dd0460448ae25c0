"""Trainer callbacks that raise what a GPU raises when a batch does not fit, so that out-of-memory
recovery runs on machines without a GPU. The distributed one is named by import path in a job's spec,
as FT_TRAINER_CALLBACKS names an operator's callbacks, because it must reach launched processes."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback


def _out_of_memory() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class OutOfMemoryAbove(TrainerCallback):
    """Any per-device batch above ``limit`` does not fit."""

    def __init__(self, limit: int):
        self.limit = limit

    def on_step_begin(self, args, state, control, **kwargs):
        if args.per_device_train_batch_size > self.limit:
            raise _out_of_memory()


class SecondProcessOutOfMemoryAfterStep4(TrainerCallback):
    """The second process of a multi-process job runs out of memory after four steps with a per-device
    batch above 4, as one GPU of several would with a long batch mid-training."""

    def on_step_begin(self, args, state, control, **kwargs):
        if os.environ.get("RANK") == "1" and state.global_step >= 4 and args.per_device_train_batch_size > 4:
            raise _out_of_memory()
