"""Fast defaults: packing, the runtime choices a worker makes for its device, the batch split, and
the tokenization cache — through the pure core, no service."""

from __future__ import annotations

import random

import pytest
import torch

from app.ml.devices import DATASHEET_PEAKS, datasheet_peak
from app.ml.packing import PackingCollator, first_fit_decreasing, packing_works
from app.ml.tasks import get_task
from tests.conftest import EXAMPLES
from tests.test_training_core import Recorder, _spec
from worker import runtime
from worker.training import DataFile, train


def test_first_fit_decreasing_fills_bins_without_overflow():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(200)]
    bins = first_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= sum(lengths) / 128 * 1.2 + 1  # nearly full rows
    assert first_fit_decreasing([300, 5], 128) == [[0], [1]]  # too long for any row: a row of its own


@pytest.fixture(scope="module")
def gpt2(base_models_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_models_dir / "tiny" / "gpt2")
    model.config.use_cache = False
    return model.eval()


def test_packed_batch_has_the_loss_of_the_padded_batch(gpt2, base_models_dir):
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    tokenizer = AutoTokenizer.from_pretrained(base_models_dir / "tiny" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    rng = random.Random(1)
    features = []
    for length in (5, 17, 3, 30, 9, 12):
        ids = [rng.randint(5, 300) for _ in range(length)]
        features.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})  # prompt tokens not trained
    packed = PackingCollator(pad_token_id=0, max_length=40)(features)
    assert packed["input_ids"].shape[0] < len(features)  # fewer rows than examples
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(
        [{**f, "attention_mask": [1] * len(f["input_ids"])} for f in features])
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    with torch.no_grad():
        assert gpt2(**packed).loss.item() == pytest.approx(gpt2(**padded).loss.item(), abs=1e-4)
    assert packing_works(gpt2, gpt2.config.vocab_size)


def test_runtime_choices_on_this_cpu():
    text_generation, classification = get_task("text-generation"), get_task("text-classification")
    hp = runtime.runtime_choices({"batch_size": 32, "devices": 2}, text_generation, training_flops=1e18)
    assert hp["precision"] == "fp32" and hp["tf32"] is False  # mixed precision and TF32 are GPU features
    assert hp["optimizer"] == "adamw_torch_fused" and hp["group_by_length"] is True
    assert hp["torch_compile"] is False  # compile time does not pay back on CPU
    assert hp["packing"] is True and hp["dataloader_workers"] == 0
    assert (hp["per_device_batch_size"], hp["gradient_accumulation_steps"]) == (16, 1)  # 16 × 1 × 2 devices
    assert "packing" not in runtime.runtime_choices({"batch_size": 8}, classification)
    # Given values are kept: a user's choices, or those an earlier attempt of the job trained with.
    kept = runtime.runtime_choices({"batch_size": 32, "gradient_accumulation_steps": 4, "torch_compile": True,
                            "packing": False}, text_generation)
    assert (kept["per_device_batch_size"], kept["gradient_accumulation_steps"]) == (8, 4)
    assert kept["torch_compile"] is True and kept["packing"] is False


def test_compile_is_chosen_by_the_work_a_job_holds_not_its_step_count():
    # BERT-base (110 M parameters) on 10,000 rows of 128 tokens: ~4 s of eager training on an H100,
    # far below the compile time; GPT-2 (124 M) on 100,000 rows of 1,024 tokens: minutes.
    short, long = 6 * 110e6 * 10_000 * 128, 6 * 124e6 * 100_000 * 1024
    assert runtime.eager_seconds(short, "NVIDIA H100 80GB HBM3") < 10
    assert runtime.eager_seconds(long, "NVIDIA H100 80GB HBM3") > runtime.COMPILE_MIN_SECONDS
    # Twice the GPUs, half the time; an older card is slower than the H100 it is not.
    assert runtime.eager_seconds(long, "NVIDIA H200", devices=2) == pytest.approx(
        runtime.eager_seconds(long, "NVIDIA H200") / 2)
    assert runtime.eager_seconds(short, "Tesla V100-SXM2-16GB") > runtime.eager_seconds(short, "NVIDIA H200")
    assert datasheet_peak("NVIDIA L40S") == DATASHEET_PEAKS["nvidia-l40s"]  # not taken for the L4
    assert datasheet_peak("NVIDIA L4") == DATASHEET_PEAKS["nvidia-l4"]


def test_largest_fitting_batch_halves_until_it_fits():
    tried = []

    def fits(size):
        tried.append(size)
        return size <= 20

    assert runtime.largest_fitting(128, fits) == 16 and tried == [128, 64, 32, 16]
    assert runtime.largest_fitting(8, lambda size: False) == 1


def test_repeated_job_reads_tokenized_data_from_the_cache(base_models_dir, tmp_path):
    data = DataFile(EXAMPLES / "sentiment.csv", "csv")

    def run(name, **hp):
        spec = _spec(base_models_dir, n_epochs=1, **hp)
        spec.token_cache_dir = tmp_path / "cache"
        reporter = Recorder()
        outcome = train(spec, data, None, tmp_path / name, reporter, progress_interval_s=0)
        tokenized = next(m for _, m in reporter.events if m.startswith("Tokenized"))
        return outcome, tokenized

    first, first_message = run("a")
    again, again_message = run("b", learning_rate=1e-3)  # another learning rate: same tokens
    other, other_message = run("c", max_seq_length=16)  # another max_seq_length: tokenized anew
    assert "from the tokenization cache" not in first_message
    assert "from the tokenization cache" in again_message and again.trained_tokens == first.trained_tokens
    assert "from the tokenization cache" not in other_message and other.trained_tokens < first.trained_tokens
    assert len([entry for namespace in (tmp_path / "cache").iterdir() for entry in namespace.iterdir()]) == 2


@pytest.mark.parametrize("task_name, model_name", [("text-classification", "bert"), ("text-generation", "gpt2")])
def test_batch_probe_builds_trainable_worst_case_batches(task_name, model_name, base_models_dir, tmp_path):
    """The GPU batch probe's batches (the longest examples, the model's own inputs), run here on CPU."""
    from transformers import AutoTokenizer

    from app.data.scan import scan_file
    from tests.support import task_data
    from worker.preparation import prepare
    from worker.token_cache import TokenCache

    task = get_task(task_name)
    path = base_models_dir / "tiny" / model_name
    if task_name == "text-classification":
        data, mapping = DataFile(EXAMPLES / "sentiment.csv", "csv"), {"text": "text", "label": "label"}
    else:
        data = DataFile(tmp_path / "pc.jsonl", "jsonl")
        data.path.write_bytes(task_data.jsonl(task_data.prompt_completion(40)))
        mapping = {"prompt": "prompt", "completion": "completion"}
    plan = task.plan(mapping, scan_file(data.path).profile(), None)
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(path), plan)
    prepared = prepare(task, tokenizer, str(path), mapping, plan, 64, 0, data, None, tmp_path, TokenCache(None, 0))
    model = task.load_model(str(path), plan)
    collator = task.collator(tokenizer, model, None, packing_length=64 if task_name == "text-generation" else None)
    batch = runtime.worst_case_batches(model, prepared.train, collator, 8)(8)
    assert batch["input_ids"].shape[-1] >= max(prepared.train["length"]) and "length" not in batch
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
