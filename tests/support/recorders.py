"""Trainer callbacks that note what a job did, for tests that pass them by import path (FT_TRAINER_CALLBACKS)."""

from __future__ import annotations

from transformers import TrainerCallback

SAMPLERS: list[str] = []


class SamplerRecorder(TrainerCallback):
    """Notes which sampler the job's training data loader draws from."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        sampler = getattr(train_dataloader.batch_sampler, "sampler", None) or train_dataloader.sampler
        SAMPLERS.append(type(sampler).__name__)
