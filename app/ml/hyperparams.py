"""Turn the request's hyperparameters (numbers or "auto") into concrete values, shown resolved on the
job. The defaults follow what works for fine-tuning small and mid-size encoders: a few epochs,
5e-5-scale learning rates with warm-up, batch 16–32; small datasets get more epochs so that
they see enough optimiser steps."""

from __future__ import annotations

import math
from typing import Any

BASE_LEARNING_RATE = 5e-5  # for a BERT-base-wide model (hidden size 768) at batch 8
REFERENCE_WIDTH = 768
# LoRA trains a few small matrices from zero and needs larger steps than full fine-tuning.
ADAPTER_LEARNING_RATE = 2e-4
DEFAULTS: dict[str, Any] = {
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "lr_scheduler": "linear",
}
# A request that gives its own learning rate brings its own recipe (a paper's, a script's, a colleague's):
# the shaping the service adds around its own rates gives way to the Trainer's defaults, none, unless the
# request gives it too. Measured with a script's settings on CoNLL-2003 (bench/explicit_settings.py), the
# service's 10% warm-up alone cost about 1 F1 point against the script (bench/RESULTS.md, issue 16).
GIVEN_RATE_DEFAULTS: dict[str, Any] = {"warmup_ratio": 0.0, "weight_decay": 0.0, "lr_scheduler": "linear"}
# Choices the worker makes for its device (per-device batch and accumulation, precision, compile):
# a value given here is kept, "auto" is resolved when the job starts and written onto the job.
RUNTIME_KEYS = ("gradient_accumulation_steps", "per_device_batch_size", "precision", "torch_compile")
# What a request may ask for (app/schemas/jobs.py takes its choices from here).
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SEQ_LENGTH_CAP = 256
# Preference tuning (DPO) moves a policy away from its reference in small steps: the learning rate of
# supervised training for the same model, scaled down (the DPO paper and TRL train 7B models at 5e-7 to
# 5e-6, ~10× below their SFT rates), and few epochs, as pairs are fitted (and overfitted) fast.
DPO_DEFAULTS: dict[str, Any] = {"beta": 0.1}
DPO_LEARNING_RATE_SCALE = {"full": 0.1, "adapter": 0.25}
DPO_MAX_AUTO_EPOCHS = 3


def holdout_rows(train_rows: int, has_validation_file: bool, validation_split: Any = None) -> int:
    """Rows a job without a validation file keeps aside for evaluation. A given ``validation_split`` is
    that fraction of the rows (0: none, every row trains). By default 5%, at most 500, none for files too
    small to spare any. The worker and the API both use this, so estimates match."""
    if has_validation_file:
        return 0
    if _given(validation_split):
        split = float(validation_split)
        return min(train_rows - 1, max(1, round(split * train_rows))) if split > 0 and train_rows > 1 else 0
    if train_rows < 50:
        return 0
    return min(500, max(5, round(0.05 * train_rows)))


def _given(value: Any) -> bool:
    return value is not None and value != "auto"


def resolve_hyperparameters(requested: dict[str, Any], train_rows: int, model_max_positions: int | None,
                            mean_text_chars: float, has_validation_file: bool = False, task=None,
                            adapter: dict[str, Any] | None = None, model_width: int | None = None,
                            method: str = "supervised") -> dict[str, Any]:
    """Every hyperparameter of a job with a value: what the request gave, else a default chosen for this
    file, task, model and method. The runtime choices that depend on the worker's device (precision, batch
    split, compile) stay for the worker (worker/runtime.py), unless the request gave them."""
    held_out = holdout_rows(train_rows, has_validation_file, requested.get("validation_split"))
    evaluates = has_validation_file or held_out > 0
    train_rows -= held_out
    dpo = method == "dpo"
    # The rows kept aside are shown (and used by the worker) as a count, whatever the request said.
    resolved: dict[str, Any] = {"holdout_rows": held_out, "batch_size": _batch_size(requested, train_rows)}
    resolved["n_epochs"] = _epochs(requested, train_rows, resolved["batch_size"], DPO_MAX_AUTO_EPOCHS if dpo else 10)
    multiplier = requested.get("learning_rate_multiplier")
    resolved["learning_rate_multiplier"] = float(multiplier) if _given(multiplier) else 1.0
    resolved["learning_rate"] = _learning_rate(requested, resolved, adapter, model_width)
    if dpo:
        if not _given(requested.get("learning_rate")):
            resolved["learning_rate"] *= DPO_LEARNING_RATE_SCALE["adapter" if adapter else "full"]
        beta = requested.get("beta")
        resolved["beta"] = float(beta) if _given(beta) else DPO_DEFAULTS["beta"]
    for key, default in (GIVEN_RATE_DEFAULTS if _given(requested.get("learning_rate")) else DEFAULTS).items():
        value = requested.get(key)
        resolved[key] = value if _given(value) else default
    for key in RUNTIME_KEYS:
        if _given(requested.get(key)):
            resolved[key] = requested[key]
    if _given(requested.get("validation_split")):
        resolved["validation_split"] = float(requested["validation_split"])
    if requested.get("group_by_length") is not None:
        resolved["group_by_length"] = bool(requested["group_by_length"])
    devices = requested.get("devices")
    resolved["devices"] = int(devices) if _given(devices) else 1
    cap = task.max_seq_length_cap if task is not None else MAX_SEQ_LENGTH_CAP
    resolved["max_seq_length"] = _max_seq_length(requested, cap, mean_text_chars, model_max_positions)
    resolved.update(_schedule(requested, total_steps(train_rows, resolved), evaluates))
    for key, default in (task.default_hyperparameters if task is not None else {}).items():
        resolved[key] = requested.get(key, default)
    if adapter:
        resolved["adapter"] = adapter
    return resolved


def _batch_size(requested: dict[str, Any], train_rows: int) -> int:
    # batch_size counts examples per optimiser step, whatever the worker's split into per-device
    # micro-batches, accumulation and processes. Small files need many optimiser steps more than big
    # batches: measured on 2,000 CoNLL sentences, batch 16 lost ~2 F1 points to batch 8 at the same
    # epochs; large files gain throughput (fuller GPUs) instead.
    batch = requested.get("batch_size")
    if _given(batch):
        return int(batch)
    return 8 if train_rows <= 5_000 else 16 if train_rows <= 20_000 else 32 if train_rows <= 100_000 else 64


def _epochs(requested: dict[str, Any], train_rows: int, batch_size: int, most: int = 10) -> int:
    epochs = requested.get("n_epochs")
    if _given(epochs):
        return int(epochs)
    # Aim for at least ~300 optimiser steps on small files, never fewer than 3 or more than 10 epochs.
    steps_per_epoch = max(1, math.ceil(train_rows / batch_size))
    return min(most, max(3, math.ceil(300 / steps_per_epoch)))


def _learning_rate(requested: dict[str, Any], resolved: dict[str, Any], adapter: dict[str, Any] | None,
                   model_width: int | None) -> float:
    given = requested.get("learning_rate")
    if _given(given):
        return float(given)
    # Square-root scaling keeps the effective step size comparable when the batch grows. Full
    # fine-tuning steps shrink with the model's width (as in muP-style transfer): narrow models such as
    # MiniLM (384) want ~1e-4 — measured +1 to +3 entity-F1 on CoNLL over 5e-5 at the same budget — and
    # 4096-wide LLMs ~1e-5.
    if adapter:
        base = ADAPTER_LEARNING_RATE
    else:
        base = BASE_LEARNING_RATE * REFERENCE_WIDTH / model_width if model_width else BASE_LEARNING_RATE
        base = min(1e-4, max(1e-5, base))
    return base * math.sqrt(resolved["batch_size"] / 8) * resolved["learning_rate_multiplier"]


def _max_seq_length(requested: dict[str, Any], cap: int, mean_text_chars: float,
                    model_max_positions: int | None) -> int:
    given = requested.get("max_seq_length")
    if _given(given):
        length = int(given)
    else:
        # Dynamic padding already pads only to each batch's longest row; the cap only bounds outliers.
        # Without text statistics (lists of words, chat messages) half the task's cap is the guess.
        guess = 2 ** math.ceil(math.log2(max(32, mean_text_chars / 2))) if mean_text_chars else cap // 2
        length = min(cap, max(128, guess))
    return min(length, model_max_positions) if model_max_positions else length


def _schedule(requested: dict[str, Any], total: int, evaluates: bool) -> dict[str, Any]:
    """When to evaluate, checkpoint and stop early. About five evaluations and checkpoints per job by
    default; checkpoints fall on evaluation steps so that early stopping can go back to the best one."""
    schedule: dict[str, Any] = {}
    for key in ("eval_every", "checkpoint_every"):
        value = requested.get(key)
        schedule[key] = int(value) if _given(value) else max(1, math.ceil(total / 5))
    if not evaluates:
        schedule["eval_every"] = None
    patience = requested.get("early_stopping_patience")
    schedule["early_stopping_patience"] = int(patience) if _given(patience) else None
    if schedule["early_stopping_patience"] and schedule["eval_every"]:
        schedule["checkpoint_every"] = schedule["eval_every"]
    return schedule


def total_steps(train_rows: int, hyperparameters: dict[str, Any]) -> int:
    return max(1, math.ceil(train_rows / int(hyperparameters["batch_size"]))) * int(hyperparameters["n_epochs"])
