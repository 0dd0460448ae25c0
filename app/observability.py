"""Prometheus metrics of the serving path (scraped at ``GET /metrics``): how requests were batched
and what the model cache holds. Counters are per process; Prometheus sums the replicas.

Labels are tasks, never model ids: a fine-tuned model's id names its project's suffix and job, and
/metrics is scraped without an API key."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREDICT_REQUESTS = Counter("finetune_predict_requests_total", "Prediction requests", ["task"])
PREDICT_INPUTS = Counter("finetune_predict_inputs_total", "Inputs predicted", ["task"])
PREDICT_BATCHES = Counter("finetune_predict_batches_total", "Batched forwards run", ["task"])
BATCH_INPUTS = Histogram("finetune_predict_batch_inputs", "Inputs per batched forward",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
CACHE_BYTES = Gauge("finetune_model_cache_bytes", "Memory held by loaded prediction models")
CACHE_MODELS = Gauge("finetune_model_cache_models", "Fine-tuned models loaded for prediction")
CACHE_ADAPTERS = Gauge("finetune_model_cache_adapters", "LoRA models loaded for prediction (on shared bases)")
CACHE_BASES = Gauge("finetune_model_cache_shared_bases", "Base models loaded once and shared by LoRA adapters")
