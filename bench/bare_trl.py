"""The hand-written baselines for chat models: a bare TRL ``SFTTrainer`` (chat SFT on the preferred answers
of preference pairs) and a bare TRL ``DPOTrainer`` (the pairs themselves), given the same settings as a
service job (learning rate, epochs, batch, max length, warm-up, seed, full or LoRA) and otherwise TRL's
defaults — except the two that assume a GPU: bf16 and gradient checkpointing are off, as the service has
them on a CPU.

Rows are OpenAI preference pairs (``{"input": {"messages": […]}, "preferred_output": […],
"non_preferred_output": […]}``). SFT learns the assistant turns only, as the service does by default;
its score is the perplexity of the held-out preferred answers. DPO's is TRL's held-out reward accuracy.
Timed: model load, tokenizing (building the trainer), training, the held-out score and saving the
model: the same work as a service job's "Training finished in N s", which adds one thing of its own, the
evaluation of the starting model (its "before"). ``train_seconds`` is the training loop alone.

    python -m bench.bare_trl --method sft --model <folder> --train $FT_DATASETS_DIR/hh_rlhf/train.jsonl \
        --train-rows 24 --eval-rows 16 --learning-rate 1.1547e-4 --epochs 3 --batch-size 24 --accumulation 3 \
        --warmup-ratio 0
    python -m bench.bare_trl --method dpo --model <folder> --train $FT_DATASETS_DIR/hh_rlhf/train.jsonl \
        --train-rows 8 --eval-rows 16 --learning-rate 5e-4 --epochs 3 --batch-size 8 --warmup-ratio 0 \
        --beta 0.1 --lora-r 16

(the settings of tests/test_realism_chat.py, whose jobs resolve these learning rates).
HH-RLHF has no validation file: without ``--eval``, the rows are split with bench.bare_common.split_rows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.bare_common import (SEED, Stopwatch, answer_perplexity, baseline_main, preferred_conversation,
                               read_jsonl, seeded)

# SmolLM2's ChatML template with TRL's {% generation %} markers around each assistant turn, which is how
# TRL finds the tokens assistant_only_loss trains on (it ships marked templates for some families, not
# for SmolLM2). It renders exactly as the model's own template; sft() checks that before training.
# The marked span is what the service trains on too: the answer, its <|im_end|> and the newline after.
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Pairs with a message longer than this are left out of the CPU runs (chat_pairs): ~70 tokens a conversation.
MAX_CHARS = 300


def chat_pairs(pairs: list[dict], single_turn: bool = True, max_chars: int | None = None) -> list[dict]:
    """The pairs a small CPU run can afford: one user turn (no earlier assistant turns), every side
    within ``max_chars`` characters. File order is kept."""
    def size(pair):
        return max(len(m["content"]) for m in [*pair["input"]["messages"], *pair["preferred_output"],
                                               *pair["non_preferred_output"]])

    return [p for p in pairs if (not single_turn or len(p["input"]["messages"]) == 1)
            and (max_chars is None or size(p) <= max_chars)]


def _lora(lora: dict[str, Any] | None):
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"])


def _settings(out: str, learning_rate: float, n_epochs: float, batch_size: int, accumulation: int, max_length: int,
              seed: int, warmup_ratio: float, weight_decay: float, lr_scheduler: str) -> dict[str, Any]:
    """The arguments both trainers take, as a user fills them in for these settings: ``batch_size``
    examples per optimiser step, in ``accumulation`` micro-batches."""
    if batch_size % accumulation:
        raise ValueError(f"batch_size {batch_size} is not a multiple of {accumulation} micro-batches")
    return {"output_dir": out, "learning_rate": learning_rate, "num_train_epochs": n_epochs,
            "per_device_train_batch_size": batch_size // accumulation, "gradient_accumulation_steps": accumulation,
            "max_length": max_length, "seed": seed,
            "warmup_steps": warmup_ratio,  # transformers 5: a value below 1 is a ratio of the steps
            "weight_decay": weight_decay, "lr_scheduler_type": lr_scheduler,
            "bf16": False, "gradient_checkpointing": False, "use_cpu": True,
            "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "logging_steps": 10}


def _load(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path), AutoModelForCausalLM.from_pretrained(model_path,
                                                                                           dtype=torch.float32)


def sft(model_path: str, train_rows: list[dict], eval_rows: list[dict], *, learning_rate: float,
        n_epochs: float = 1, batch_size: int = 8, accumulation: int = 1, max_length: int = 256, seed: int = SEED,
        warmup_ratio: float = 0.1, weight_decay: float = 0.01, lr_scheduler: str = "linear",
        lora: dict[str, Any] | None = None, **training_args) -> dict:
    """Chat SFT on each pair's input messages + preferred answer; the held-out preferred answers'
    perplexity (bench.bare_common.answer_perplexity) after training."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    seeded(seed)
    clock = Stopwatch()
    with clock.lap("load"):
        tokenizer, model = _load(model_path)
    own_template = tokenizer.chat_template
    probe = preferred_conversation(eval_rows[0])
    expected = tokenizer.apply_chat_template(probe, tokenize=False)
    tokenizer.chat_template = SMOLLM2_TRAINING_TEMPLATE
    if tokenizer.apply_chat_template(probe, tokenize=False) != expected:
        raise ValueError("SMOLLM2_TRAINING_TEMPLATE does not render as this model's chat template")
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(**{**_settings(out, learning_rate, n_epochs, batch_size, accumulation, max_length, seed,
                                          warmup_ratio, weight_decay, lr_scheduler),
                              "assistant_only_loss": True, **training_args})
        data = Dataset.from_list([{"messages": preferred_conversation(pair)} for pair in train_rows])
        with clock.lap("tokenize"):
            trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                 peft_config=_lora(lora))
        with clock.lap("train"):
            result = trainer.train()
        tokenizer.chat_template = own_template
        with clock.lap("evaluate"):
            perplexity = answer_perplexity(trainer.model, tokenizer, [preferred_conversation(p) for p in eval_rows],
                                           max_length)
        with clock.lap("save"):
            trainer.save_model(f"{out}/model")
    return {"perplexity": perplexity, "train_loss": result.training_loss, "steps": result.global_step,
            **clock.report()}


def dpo(model_path: str, train_rows: list[dict], eval_rows: list[dict], *, learning_rate: float,
        beta: float = 0.1, n_epochs: float = 1, batch_size: int = 8, accumulation: int = 1, max_length: int = 256,
        seed: int = SEED,
        warmup_ratio: float = 0.1, weight_decay: float = 0.01, lr_scheduler: str = "linear",
        lora: dict[str, Any] | None = None, **training_args) -> dict:
    """DPO on the pairs (the reference: the starting model, or the base under a LoRA adapter switched
    off); TRL's evaluation of the held-out pairs after training."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    def conversational(pairs):
        return Dataset.from_list([{"prompt": p["input"]["messages"], "chosen": p["preferred_output"],
                                   "rejected": p["non_preferred_output"]} for p in pairs])

    seeded(seed)
    clock = Stopwatch()
    with clock.lap("load"):
        tokenizer, model = _load(model_path)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(**{**_settings(out, learning_rate, n_epochs, batch_size, accumulation, max_length, seed,
                                          warmup_ratio, weight_decay, lr_scheduler), "beta": beta, **training_args})
        with clock.lap("tokenize"):
            trainer = DPOTrainer(model=model, args=config, train_dataset=conversational(train_rows),
                                 eval_dataset=conversational(eval_rows), processing_class=tokenizer,
                                 peft_config=_lora(lora))
        with clock.lap("train"):
            result = trainer.train()
        with clock.lap("evaluate"):
            metrics = trainer.evaluate()
        with clock.lap("save"):
            trainer.save_model(f"{out}/model")
    return {"reward_accuracy": metrics["eval_rewards/accuracies"], "reward_margin": metrics["eval_rewards/margins"],
            "eval_loss": metrics["eval_loss"], "train_loss": result.training_loss, "steps": result.global_step,
            **clock.report()}


def run(model_path: str, train_rows: list[dict], eval_rows: list[dict], method: str = "sft", lora_r: int = 0,
        **settings) -> dict:
    """The command line's entry: ``method`` sft or dpo; ``lora_r`` > 0 trains a LoRA adapter of that
    rank (alpha 2·r, dropout 0.05, on q_proj and v_proj: the service's defaults for Llama models)."""
    lora = {"r": lora_r, "alpha": 2.0 * lora_r, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]} \
        if lora_r else None
    settings = {k: v for k, v in settings.items() if v is not None}
    return (dpo if method == "dpo" else sft)(model_path, train_rows, eval_rows, lora=lora, **settings)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("sft", "dpo"), default="sft")
    parser.add_argument("--learning-rate", dest="learning_rate", type=float, required=True)
    parser.add_argument("--epochs", dest="n_epochs", type=float, default=1)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="examples per optimiser step")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=None, help="default 0.1")
    parser.add_argument("--max-length", dest="max_length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=None, help="DPO only (default 0.1)")
    parser.add_argument("--lora-r", dest="lora_r", type=int, default=0, help="0: full fine-tuning")
    parser.add_argument("--seed", type=int, default=SEED)


def read_rows(path: Path, limit: int | None) -> list[dict]:
    """The short single-turn pairs of a preference file (chat_pairs), at most ``limit``."""
    pairs = chat_pairs(read_jsonl(path), max_chars=MAX_CHARS)
    return pairs if limit is None else pairs[:limit]


def main() -> None:
    baseline_main(__doc__, run, read_rows, eval_rows=16, options=_options, split=True)


if __name__ == "__main__":
    main()
