"""Models for serving tests, made in seconds: a tiny GPT-2 with a long context and LoRA adapters on it
(random, created on the fly), and encoders with random heads on the tiny BERT, each stored as a finished
job stores its model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_gpt2

LONG = 2048  # the long GPT-2's context
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def long_gpt2(tmp_path_factory) -> Path:
    """A tiny GPT-2 with a 2,048-token context that never ends its text (its end-of-text embedding,
    tied to the output layer, is zero), so a generation always runs its full length."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = build_tiny_gpt2(tmp_path_factory.mktemp("gpt2-long") / "base", n_positions=LONG)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_input_embeddings().weight[model.config.eos_token_id] = 0
    model.save_pretrained(path)
    return path


def _service_config(folder: Path, task: str, plan: dict, adapter: bool = False) -> Path:
    config = {"task": task, "plan": plan, "hyperparameters": {"max_seq_length": 128}}
    (folder / "finetune_service.json").write_text(json.dumps({**config, **({"adapter": {"type": "lora"}} if adapter
                                                                            else {})}))
    return folder


@pytest.fixture(scope="module")
def adapters(long_gpt2, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters (random, so they answer differently) on the long GPT-2, stored as jobs store them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folders = {}
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(long_gpt2), LoraConfig(
            task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False))
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(long_gpt2).save_pretrained(folder)
        folders[name] = _service_config(folder, "text-generation", {"format": "messages", "chat_template": CHATML},
                                        adapter=True)
    return folders


@pytest.fixture(scope="module")
def encoders(base_models_dir, tmp_path_factory) -> dict[str, Path]:
    """A text classifier and a QA model with random heads on the tiny BERT (full weights)."""
    import transformers

    bert = base_models_dir / "tiny" / "bert"
    made = {}
    for task, auto, kwargs, plan in (
            ("text-classification", "AutoModelForSequenceClassification",
             {"num_labels": 2, "id2label": {0: "bad", 1: "good"}, "label2id": {"bad": 0, "good": 1}},
             {"labels": ["bad", "good"]}),
            ("question-answering", "AutoModelForQuestionAnswering", {}, {})):
        folder = tmp_path_factory.mktemp(task)
        getattr(transformers, auto).from_pretrained(bert, **kwargs).save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(bert).save_pretrained(folder)
        made[task] = _service_config(folder, task, plan)
    return made
