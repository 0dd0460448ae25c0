"""The pure training core, alone: no Celery, no database."""

from __future__ import annotations

import json

from app.data.scan import scan_file
from app.ml import hyperparams
from app.ml.tasks import get_task
from tests.conftest import EXAMPLES
from tests.support.faults import OutOfMemoryAbove
from worker.callbacks import NullReporter
import pytest

from worker.training import SERVICE_CONFIG, DataFile, TrainingError, TrainingSpec, train


def _spec(base_models_dir, **hp):
    profile = scan_file(EXAMPLES / "sentiment.csv").profile()
    mapping = {"text": "text", "label": "label"}
    plan = get_task("text-classification").plan(mapping, profile, None)
    resolved = hyperparams.resolve_hyperparameters({"learning_rate": 2e-3, "n_epochs": 6, "batch_size": 16, **hp}, 200, 128, 30)
    return TrainingSpec("text-classification", str(base_models_dir / "tiny" / "bert"), mapping, plan, resolved, seed=3)


class Recorder(NullReporter):
    def __init__(self, stop_after: int | None = None):
        self.snapshots, self.events, self.stop_after, self.checks = [], [], stop_after, 0

    def progress(self, progress, metrics=None):
        self.snapshots.append(progress)

    def event(self, message, *, level="info", type="message", data=None):
        self.events.append((type, message))

    def should_stop(self):
        self.checks += 1
        return "cancel" if self.stop_after is not None and self.checks >= self.stop_after else None


def test_trains_and_saves_a_servable_model(base_models_dir, tmp_path):
    reporter = Recorder()
    data = DataFile(EXAMPLES / "sentiment.csv", "csv")
    outcome = train(_spec(base_models_dir), data, DataFile(EXAMPLES / "sentiment_validation.csv", "csv"),
                    tmp_path / "model", reporter, progress_interval_s=0)
    assert not outcome.stopped and outcome.steps == 78  # ceil(200 / 16) * 6
    assert outcome.metrics["eval_accuracy"] >= 0.8 and outcome.trained_tokens > 0
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in files and not files & {"pytorch_model.bin", "training_args.bin"}
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert json.loads((tmp_path / "model" / SERVICE_CONFIG).read_text())["task"] == "text-classification"
    assert reporter.snapshots[-1]["step"] == 78 and reporter.snapshots[-1]["percent"] == 100.0
    assert any(kind == "metrics" for kind, _ in reporter.events)


def test_stops_cooperatively(base_models_dir, tmp_path):
    outcome = train(_spec(base_models_dir, n_epochs=50), DataFile(EXAMPLES / "sentiment.csv", "csv"), None,
                    tmp_path / "model", Recorder(stop_after=3), progress_interval_s=0)
    assert outcome.stopped == "cancel" and outcome.steps < 50 * 13
    assert not (tmp_path / "model").exists()


def test_auto_hyperparameters():
    small = hyperparams.resolve_hyperparameters({}, 200, 512, 40)
    assert small["batch_size"] == 8 and small["n_epochs"] == 10 and small["max_seq_length"] == 128
    large = hyperparams.resolve_hyperparameters({}, 60_000, 512, 600)
    assert large["batch_size"] == 32 and large["n_epochs"] == 3 and large["max_seq_length"] == 256
    assert hyperparams.resolve_hyperparameters({"max_seq_length": 1024}, 10, 512, 1)["max_seq_length"] == 512
    assert "precision" not in small and hyperparams.resolve_hyperparameters({"precision": "bf16"}, 10, None, 1)["precision"] == "bf16"
    # Learning rates shrink with the model's width: MiniLM-wide 1e-4, BERT-base 5e-5, LLM-wide 1e-5.
    assert [hyperparams.resolve_hyperparameters({}, 200, 512, 40, model_width=w)["learning_rate"] for w in (384, 768, 4096)] == \
        [1e-4, 5e-5, 1e-5]
    assert hyperparams.resolve_hyperparameters({}, 200, 512, 40, model_width=4096, adapter={"r": 8})["learning_rate"] == 2e-4


def test_a_given_learning_rate_brings_its_own_recipe():
    """The service's warm-up and weight decay go with its own learning rates; a script's rate trains as the
    script does (no warm-up, no decay) unless the request gives them too (issue 16)."""
    def shaping(requested):
        resolved = hyperparams.resolve_hyperparameters(requested, 4000, 512, 60)
        return resolved["warmup_ratio"], resolved["weight_decay"], resolved["lr_scheduler"]

    assert shaping({}) == shaping({"learning_rate": "auto"}) == shaping({"learning_rate_multiplier": 2}) \
        == (0.1, 0.01, "linear")
    assert shaping({"learning_rate": 5e-5, "n_epochs": 1, "batch_size": 32}) == (0.0, 0.0, "linear")
    assert shaping({"learning_rate": 5e-5, "warmup_ratio": 0.06, "weight_decay": 0.1, "lr_scheduler": "cosine"}) \
        == (0.06, 0.1, "cosine")


def test_out_of_memory_halves_the_batch_and_keeps_the_effective_batch(base_models_dir, tmp_path):
    reporter = Recorder()
    outcome = train(_spec(base_models_dir, batch_size=16, n_epochs=1), DataFile(EXAMPLES / "sentiment.csv", "csv"),
                    None, tmp_path / "model", reporter, extra_callbacks=[OutOfMemoryAbove(4)], progress_interval_s=0)
    assert outcome.hyperparameters["per_device_batch_size"] == 4 and outcome.hyperparameters["batch_size"] == 16
    assert outcome.hyperparameters["gradient_accumulation_steps"] == 4  # 16 × 1 == 4 × 4
    warnings = [m for kind, m in reporter.events if "Out of GPU memory" in m]
    assert len(warnings) == 2 and (tmp_path / "model" / "model.safetensors").exists()


def test_out_of_memory_at_batch_one_fails_with_advice(base_models_dir, tmp_path):
    with pytest.raises(TrainingError) as failure:
        train(_spec(base_models_dir, batch_size=2, n_epochs=1), DataFile(EXAMPLES / "sentiment.csv", "csv"), None,
              tmp_path / "model", Recorder(), extra_callbacks=[OutOfMemoryAbove(0)], progress_interval_s=0)
    assert failure.value.code == "out_of_memory" and "max_seq_length" in failure.value.message


def test_trainer_callbacks_by_import_path(base_models_dir, tmp_path):
    """FT_TRAINER_CALLBACKS reaches the core as import paths; one that does not import fails the job
    with a message naming it and the setting."""
    spec = _spec(base_models_dir, batch_size=16, n_epochs=1)
    spec.callbacks = ["tests.support.faults:NoSuchCallback"]
    with pytest.raises(TrainingError) as failure:
        train(spec, DataFile(EXAMPLES / "sentiment.csv", "csv"), None, tmp_path / "model", Recorder())
    assert failure.value.code == "bad_trainer_callback"
    assert "tests.support.faults:NoSuchCallback" in failure.value.message and "FT_TRAINER_CALLBACKS" in failure.value.message


# One more evaluation than the schedule's: the base model's, at step 0 (the "before" of before → after).
@pytest.mark.parametrize(("every", "evaluations", "checkpoints"), [(32, 4, [32, 64]), (39, 3, [39, 78])])
def test_the_final_model_is_evaluated_once_and_not_checkpointed_twice(base_models_dir, tmp_path, every,
                                                                      evaluations, checkpoints):
    """transformers would evaluate and checkpoint after the last step on top of its schedule, and the
    worker evaluated again: the last step is evaluated once, and checkpointed only on schedule."""
    spec = _spec(base_models_dir, eval_every=every, checkpoint_every=every)
    spec.checkpoint_dir = tmp_path / "checkpoints"
    reporter = Recorder()
    outcome = train(spec, DataFile(EXAMPLES / "sentiment.csv", "csv"),
                    DataFile(EXAMPLES / "sentiment_validation.csv", "csv"), tmp_path / "model", reporter,
                    progress_interval_s=0)
    assert outcome.steps == 78
    assert sum(message.startswith("Evaluation") for _, message in reporter.events) == evaluations
    assert sorted(int(p.name.split("-")[1]) for p in spec.checkpoint_dir.glob("checkpoint-*")) == checkpoints
    assert outcome.metrics["eval_accuracy"] >= 0.8 and "eval_loss" in outcome.metrics
