"""How this machine runs a job fast, decided where the device is known (the worker) and written onto
the job so that nothing stays "auto": precision and tf32, how the requested batch splits into
per-device micro-batches × accumulation × processes, the fused optimizer, torch.compile, packing and
data-loading workers. Each choice says why where it is made."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

log = logging.getLogger(__name__)

OPTIMIZER = "adamw_torch_fused"  # one fused kernel per step instead of a loop over parameters
# torch.compile costs 30–60 s up front (forward and backward graphs, a recompile when padded lengths
# start to vary) and then saves ~15% (BERT-base at seq 128) to ~55% (GPT-2 at seq 1024) of each step
# on an H200. It pays back when the job would otherwise train for about this long:
COMPILE_MIN_SECONDS = 180
# Utilisation an uncompiled bf16 Trainer reaches on a GPU, for that estimate (measured 15–23% on an H200).
EAGER_MFU = 0.2
# Memory the batch probe leaves free for what a probe step does not allocate (allocator
# fragmentation, evaluation, the odd longer batch).
HEADROOM = 0.85


def resolve_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        if requested in ("bf16", "fp16") and not torch.cuda.is_available():
            return "fp32"  # mixed precision is a GPU feature; on CPU it would only slow down or fail
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def require_quantization_support(hyperparameters: dict[str, Any]) -> None:
    """Refuse a QLoRA job (adapter.quantization "4bit") at once where it cannot run: bitsandbytes' 4-bit
    kernels need a CUDA GPU. Failing before any tokenizing or loading names the setting to change; a
    silent fallback to an unquantized base would need several times the memory the job was sized for."""
    quantization = (hyperparameters.get("adapter") or {}).get("quantization")
    if not quantization:
        return
    import torch
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION, is_bitsandbytes_available

    from worker.training import TrainingError  # training imports this module

    if not torch.cuda.is_available():
        missing = "this worker has no CUDA device"
    elif not is_bitsandbytes_available():
        missing = (f"this worker lacks bitsandbytes >= {BITSANDBYTES_MIN_VERSION} "
                   "(pip install 'finetune-service[gpu]')")
    else:
        return
    raise TrainingError("quantization_unavailable", f"adapter.quantization '{quantization}' needs a CUDA GPU and "
                        f"the bitsandbytes package; {missing}. Run the job on a GPU worker, or leave "
                        "adapter.quantization out.")


def eager_seconds(training_flops: float, device_name: str, devices: int = 1) -> float:
    """How long a job of ``training_flops`` would train uncompiled on ``devices`` such GPUs."""
    from app.ml.devices import datasheet_peak

    return training_flops / (datasheet_peak(device_name) * EAGER_MFU * max(1, devices))


def runtime_choices(hyperparameters: dict[str, Any], task, training_flops: float | None = None) -> dict[str, Any]:
    """The job's hyperparameters with every runtime choice made for this machine. Values already
    present (given by the user, or written by an earlier attempt of the same job) are kept, so a
    resumed job continues with the batch geometry its checkpoints were made with.
    ``training_flops`` (6 × parameters × trained tokens) sizes the job for the torch.compile choice."""
    import torch

    gpu = torch.cuda.is_available()
    out = dict(hyperparameters)
    out["device"] = torch.cuda.get_device_name() if gpu else "cpu"
    out["precision"] = resolve_precision(hyperparameters.get("precision") or "auto")
    # TF32 matmuls on Ampere and newer: ~8× the fp32 rate, with fp32 range.
    out["tf32"] = bool(gpu and torch.cuda.get_device_capability()[0] >= 8)
    out["devices"] = int(hyperparameters.get("devices") or 1)
    out["optimizer"] = OPTIMIZER
    # Dynamic padding wastes little when a batch holds similar lengths (worker/sampling.py); a request may say no.
    out["group_by_length"] = bool(hyperparameters.get("group_by_length", True))
    compile_choice = hyperparameters.get("torch_compile", "auto")
    if compile_choice in (None, "auto"):
        # On GPU compiled kernels fuse the many small element-wise ops of a transformer layer, worth it
        # for jobs long enough to repay the compile time — judged by work, not step count: a step of
        # GPT-2 at 8 × 1,024 tokens costs 64× one of BERT-base at 16 × 128. On CPU the compile time
        # outweighs the gain for fine-tuning-sized jobs, so it stays off there.
        compile_choice = bool(gpu and training_flops and eager_seconds(training_flops, out["device"], out["devices"])
                              >= COMPILE_MIN_SECONDS)
    out["torch_compile"] = bool(compile_choice)
    # A supervised text-generation choice; DPO jobs (they have a beta) train on pairs TRL collates.
    if "packing" in task.default_hyperparameters and "beta" not in hyperparameters:
        out["packing"] = bool(hyperparameters.get("packing", True))
    # Workers collate the next batches while the GPU runs this one; on CPU they would only take
    # cores from the matmuls.
    cpus = os.cpu_count() or 1
    out["dataloader_workers"] = min(4, max(1, cpus // out["devices"] - 1)) if gpu else 0
    out.update(split_batch(int(hyperparameters["batch_size"]), out["devices"],
                           hyperparameters.get("gradient_accumulation_steps"), hyperparameters.get("per_device_batch_size")))
    return out


def split_batch(batch_size: int, devices: int, accumulation: int | None = None,
                per_device: int | None = None) -> dict[str, int]:
    """``batch_size`` examples per optimiser step as per-device micro-batches × accumulation ×
    devices (rounded up where it does not divide). The batch probe may then shrink the micro-batch."""
    accumulation = int(accumulation or 1)
    if not per_device:
        per_device = max(1, math.ceil(batch_size / (devices * accumulation)))
    return {"per_device_batch_size": int(per_device), "gradient_accumulation_steps": accumulation}


def largest_fitting(start: int, fits: Callable[[int], bool]) -> int:
    """The largest micro-batch, halving from ``start``, for which ``fits`` holds (at least 1)."""
    size = start
    while size > 1 and not fits(size):
        size = (size + 1) // 2
    return size


def data_lengths(dataset) -> list[int]:
    return dataset["length"] if "length" in dataset.column_names else [len(ids) for ids in dataset["input_ids"]]


def worst_case_batches(model, dataset, collator, largest: int) -> Callable[[int], dict[str, Any]]:
    """size → a collated batch of the ``size`` longest examples, holding only what the model's
    forward takes (as the Trainer would hand it over)."""
    import inspect

    import numpy as np

    longest = np.argsort(-np.asarray(data_lengths(dataset)), kind="stable")[:largest].tolist()
    forward = (model.get_base_model() if hasattr(model, "get_base_model") else model).forward
    accepted = set(inspect.signature(forward).parameters) | {"labels"}
    # A collator that builds the model inputs from other columns (DPO pairs) names them itself.
    accepted = set(getattr(collator, "columns", ())) or accepted
    columns = [c for c in dataset.column_names if c in accepted]
    worst = dataset.select(longest)
    return lambda size: collator([{k: worst[i][k] for k in columns} for i in range(min(size, len(worst)))])


def _smallest_across_processes(size: int, device) -> int:
    """Processes of one job probe their own GPU; all train with the smallest batch any could fit,
    so that every process runs the same number of micro-batches per step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return size
    value = torch.tensor([size], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def fit_batch_to_memory(hyperparameters: dict[str, Any], model, dataset, collator, reporter) -> None:
    """On a GPU, find the largest per-device micro-batch that fits — trying the longest examples, one
    forward and backward each — and raise accumulation to keep ``batch_size`` per optimiser step.
    The caller skips this where the user fixed gradient_accumulation_steps. The probe only saves
    time: should it fail for any reason but memory, training goes on with the batch as it was
    (an out-of-memory error during training still halves it)."""
    import torch

    if not torch.cuda.is_available():
        return
    start = int(hyperparameters["per_device_batch_size"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    total = torch.cuda.get_device_properties(device).total_memory
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer_bytes = trainable * 4 * 2  # AdamW's two fp32 moments, allocated at the first step
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hyperparameters["precision"])

    def fits(size: int) -> bool:
        try:
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batches(size).items()}
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = model(**batch).loss
            loss.backward()
            peak = torch.cuda.max_memory_allocated(device)
            return peak + optimizer_bytes <= HEADROOM * total
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    try:
        model.to(device)
        batches = worst_case_batches(model, dataset, collator, start)
        chosen = largest_fitting(start, fits)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("batch probe failed; keeping per-device batch %s: %s", start, exc)
        chosen = start
    chosen = _smallest_across_processes(chosen, device)
    if chosen < start:
        hyperparameters["per_device_batch_size"] = chosen
        accumulation = int(hyperparameters["gradient_accumulation_steps"]) * math.ceil(start / chosen)
        hyperparameters["gradient_accumulation_steps"] = accumulation
        reporter.event(f"A per-device batch of {start} does not fit in GPU memory at the longest examples; "
                       f"using {chosen} × {accumulation} accumulation steps (same examples per optimiser step).",
                       data={"per_device_batch_size": chosen, "gradient_accumulation_steps": accumulation})
