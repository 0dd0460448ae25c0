"""What this service assumes about accelerators it has not measured — the dense bf16 tensor-core peak
of common GPUs, from the vendors' datasheets — and the work a job asks of them. Job estimates (API),
the worker's torch.compile choice and its FLOP-rate metric all start from here."""

from __future__ import annotations

DATASHEET_PEAKS = {"nvidia-h200": 989e12, "nvidia-h100": 989e12, "nvidia-a100": 312e12, "nvidia-l40s": 362e12,
                   "nvidia-l4": 121e12, "nvidia-a10g": 125e12}
# For a GPU not in the table: about a V100/T4-class card, so that estimates err towards "long".
UNKNOWN_GPU_PEAK = 100e12


def training_flops(parameters: int, tokens: float, adapter: bool = False, reference: bool = False) -> float:
    """FLOPs to train on ``tokens``: 6 × parameters per token (forward, and backward for activations and
    weights); 4 × with an adapter, whose frozen base needs no weight gradients; 2 × more where a
    reference model also reads every token (DPO)."""
    return ((4 if adapter else 6) + (2 if reference else 0)) * parameters * tokens


def datasheet_peak(device_name: str) -> float:
    """Peak FLOP/s of a GPU by its torch name ("NVIDIA H100 80GB HBM3" → the H100 entry)."""
    name = device_name.strip().lower().replace(" ", "-")
    # Longest key first, so that "nvidia-l40s" is not taken for "nvidia-l4".
    for kind in sorted(DATASHEET_PEAKS, key=len, reverse=True):
        if name.startswith(kind):
            return DATASHEET_PEAKS[kind]
    return UNKNOWN_GPU_PEAK
