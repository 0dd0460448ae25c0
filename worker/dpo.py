"""Direct Preference Optimization in the training core: TRL's ``DPOTrainer`` (the reference
implementation), fed the pairs the service tokenized itself and reporting through the same callbacks as
supervised training. No Celery, no database.

Why a subclass, and what it changes:
- TRL tokenizes its datasets with the tokenizer's chat template, in this process. The service has
  already tokenized them (``app.ml.tasks.preference``): chat templates rendered in the sandboxed
  helpers, rows kept in the tokenization cache, a failing row named by its line. So the datasets pass
  through as they are.
- Its metrics are renamed to the service's (``rewards/accuracies`` → ``reward_accuracy`` …), the
  names jobs show in events, the metrics series and the CSV.
- It writes no model card: that is a README the service never hands out."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

# TRL's metric → the service's. Others TRL logs (logits, entropy…) are left out of job metrics.
METRIC_NAMES = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
                "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
                "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected"}
# Before the first step the policy is its own reference (the reference is the starting model: the base,
# the base with its adapter switched off, or the parent a job continues from). Every implicit reward
# β·(log π − log π_ref) is then 0: each pair ties, the loss is −log σ(0) = ln 2, and a reward accuracy that
# counts ties as half is exactly chance. No evaluation pass is needed to know it.
BEFORE_TRAINING = {"eval_loss": 0.6931471805599453, "eval_reward_accuracy": 0.5, "eval_reward_margin": 0.0,
                   "eval_reward_chosen": 0.0, "eval_reward_rejected": 0.0}


def dpo_arguments(hyperparameters: dict[str, Any], on_gpu: bool) -> tuple[type, dict[str, Any]]:
    """DPOConfig and what it takes beyond TrainingArguments. TRL's own defaults differ from the
    service's where it matters: it turns bf16 and gradient checkpointing on, whatever the device."""
    from trl import DPOConfig

    return DPOConfig, {
        "beta": float(hyperparameters["beta"]),
        "loss_type": ["sigmoid"],  # the DPO paper's loss
        "max_length": int(hyperparameters["max_seq_length"]),
        "truncation_mode": "keep_start",
        "disable_dropout": True,  # the policy must equal its reference before the first step
        "precompute_ref_log_probs": False,
        "gradient_checkpointing": False,
        "pad_to_multiple_of": 8 if on_gpu else None,
        "remove_unused_columns": True,
    }


def dpo_trainer_class(base_class=None):
    """``DPOTrainer``, made to take the service's tokenized pairs (see the module's docstring)."""
    from trl import DPOTrainer

    class ServiceDPOTrainer(base_class or DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids already, from app.ml.tasks.preference

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            # Kept for the length-grouped sampler (it reads "length" rather than every row).
            if "length" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "length"]

        def log(self, logs, start_time=None):
            for mode in ("train", "eval"):
                renamed = defaultdict(list)
                for key, values in self._metrics[mode].items():
                    if key in METRIC_NAMES:
                        renamed[METRIC_NAMES[key]] = values
                self._metrics[mode] = renamed
            super().log(logs, start_time)

        def create_model_card(self, *args, **kwargs):
            return None

    return ServiceDPOTrainer


def preference_collator(tokenizer, max_length: int, pad_to_multiple_of: int | None):
    """TRL's pair collator: each batch holds every pair's preferred sequences, then the non-preferred."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length,
                                     truncation_mode="keep_start", pad_to_multiple_of=pad_to_multiple_of)


class ProbeCollator:
    """The pair collator as the batch probe (worker/runtime.py) wants it: model inputs only, for a
    forward and backward over both sequences of each pair. It reads the pair columns itself."""

    columns = ("prompt_ids", "chosen_ids", "rejected_ids")

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
