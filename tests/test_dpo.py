"""Preference tuning (DPO): OpenAI's preference files detected and validated line by line, DPO jobs created
in OpenAI's method shape with resolved hyperparameters, trained by TRL's DPOTrainer inside the training core
(full and LoRA), reporting reward metrics, a "before → after", checkpoints, pause/resume and out-of-memory
retries like supervised jobs. (Supervised training on such a file, then DPO on top: tests/test_lineage.py.)"""

from __future__ import annotations

import json

import pytest

from app.data.scan import scan_file
from app.ml import hyperparams
from app.ml.tasks import get_task
from tests.conftest import upload
from tests.support import task_data as data
from tests.support.faults import OutOfMemoryAbove
from worker.callbacks import NullReporter
from worker.training import DataFile, TrainingError, TrainingSpec, latest_checkpoint, train

PAIR = data.preference(1)[0]
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-3}}}


def _pairs(n: int = 120, seed: int = 0) -> bytes:
    return data.jsonl(data.preference(n, seed))


def _job(client, file_id: str, method=DPO, **extra):
    return client.post("/v1/fine_tuning/jobs", json={"model": "tiny/gpt2", "training_file": file_id,
                                                     "chat_template": data.CHATML, "method": method, **extra})


# --- files and job requests (in-process API) -----------------------------------------------------

def test_upload_detects_preference_pairs(client):
    f = upload(client, "pairs.jsonl", _pairs(60)).json()
    assert f["status"] == "processed" and f["detected_task"] == "text-generation"
    assert f["detected_column_mapping"] == {"input": "input", "preferred_output": "preferred_output",
                                            "non_preferred_output": "non_preferred_output"}


@pytest.mark.parametrize(("broken", "param", "words"), [
    ({"non_preferred_output": []}, "column_mapping.non_preferred_output", "no non_preferred_output"),
    ({"preferred_output": None}, "column_mapping.preferred_output", "no preferred_output"),
    ({"preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "column_mapping.preferred_output", "exactly one assistant message"),
    ({"non_preferred_output": [{"role": "user", "content": "bad"}]},
     "column_mapping.non_preferred_output", "exactly one assistant message"),
    ({"non_preferred_output": PAIR["preferred_output"]}, "column_mapping.preferred_output", "identical"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}},
     "column_mapping.input", "last message is the assistant's"),
    ({"input": {"text": "no messages"}}, "column_mapping.input", "preference format"),
])
def test_each_broken_pair_is_named_by_its_line(client, broken, param, words):
    rows = data.preference(40)
    rows[16] = {**rows[16], **broken}  # line 17
    f = upload(client, "pairs.jsonl", data.jsonl(rows)).json()
    error = _job(client, f["id"]).json()["error"]
    assert error["param"] == param and "Line 17 of training_file" in error["message"], error
    assert words in error["message"]


def test_dpo_job_shows_resolved_hyperparameters_in_openai_shape(client):
    f = upload(client, "pairs.jsonl", _pairs(60)).json()
    job = _job(client, f["id"], {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 1}}}).json()
    assert job["status"] == "queued" and job["method"]["type"] == "dpo", job
    resolved = job["method"]["dpo"]["hyperparameters"]
    assert resolved == job["hyperparameters"] and resolved["beta"] == 0.25 and resolved["n_epochs"] == 1
    assert "packing" not in resolved and "completion_only_loss" not in resolved
    auto = _job(client, f["id"], {"type": "dpo"}).json()["hyperparameters"]
    supervised = _job(client, f["id"], {"type": "supervised"}).json()["hyperparameters"]
    # DPO's defaults: beta 0.1, a tenth of the supervised learning rate, at most 3 epochs.
    assert auto["beta"] == 0.1 and auto["learning_rate"] == pytest.approx(supervised["learning_rate"] / 10)
    assert auto["n_epochs"] <= 3 < supervised["n_epochs"]


@pytest.mark.parametrize(("method", "param"), [
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"packing": True}}}, "method.dpo.hyperparameters.packing"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}, "method.supervised.hyperparameters.beta"),
    ({"type": "reinforcement"}, "method.type"),
])
def test_bad_methods_are_refused_naming_the_field(client, method, param):
    f = upload(client, "pairs.jsonl", _pairs(60)).json()
    response = _job(client, f["id"], method)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_dpo_needs_preference_pairs(client):
    f = upload(client, "chat.jsonl", data.jsonl(data.chat(60))).json()
    error = _job(client, f["id"]).json()["error"]
    assert error["param"] == "training_file" and "preference format" in error["message"]


def test_estimate_counts_both_sequences_and_the_reference(client):
    f = upload(client, "pairs.jsonl", _pairs(60)).json()
    body = {"model": "tiny/gpt2", "training_file": f["id"], "chat_template": data.CHATML,
            "hyperparameters": {"n_epochs": 1}}
    supervised = client.post("/v1/fine_tuning/jobs/estimate", json=body).json()
    dpo = client.post("/v1/fine_tuning/jobs/estimate", json={**body, "hyperparameters": None, "method": {
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1}}}}).json()
    # Two sequences a pair (the prompt twice), and a reference forward on top: well over twice the work.
    assert dpo["trained_tokens"] > 1.5 * supervised["trained_tokens"]
    assert dpo["training_flops"] > 2.5 * supervised["training_flops"]


# --- the training core -----------------------------------------------------------------------

class Recorder(NullReporter):
    def __init__(self):
        self.events, self.before = [], None

    def event(self, message, *, level="info", type="message", data=None):
        self.events.append((type, message, data))

    def baseline(self, metric, metrics, note):
        self.before = (metric, metrics, note)


class PauseAtStep(Recorder):
    def __init__(self, step: int):
        super().__init__()
        self.step, self.checks = step, 0

    def should_stop(self):
        self.checks += 1  # asked once a step (progress_interval_s=0)
        return "pause" if self.checks >= self.step else None


def _spec(base_models_dir, tmp_path, adapter=None, **hp):
    task = get_task("text-generation")
    (tmp_path / "train.jsonl").write_bytes(_pairs(120))
    (tmp_path / "valid.jsonl").write_bytes(_pairs(24, seed=1))
    profile = scan_file(tmp_path / "train.jsonl").profile()
    mapping = task.detect(profile)
    plan = {**task.plan(mapping, profile, None), "method": "dpo", "chat_template": data.CHATML}
    resolved = hyperparams.resolve_hyperparameters({"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-3, **hp},
                                                   120, 256, 0, True, task, adapter=adapter, method="dpo")
    return TrainingSpec("text-generation", str(base_models_dir / "tiny" / "gpt2"), mapping, plan, resolved, seed=1,
                        checkpoint_dir=tmp_path / "checkpoints")


def _files(tmp_path):
    return DataFile(tmp_path / "train.jsonl", "jsonl"), DataFile(tmp_path / "valid.jsonl", "jsonl")


def test_dpo_raises_reward_accuracy_and_margin(base_models_dir, tmp_path):
    reporter = Recorder()
    outcome = train(_spec(base_models_dir, tmp_path), *_files(tmp_path), tmp_path / "model", reporter,
                    progress_interval_s=0)
    metric, before, note = reporter.before
    assert metric == "eval_reward_accuracy" and before["eval_reward_accuracy"] == 0.5 and "ties" in note
    assert outcome.metrics["eval_reward_accuracy"] > 0.7 and outcome.metrics["eval_reward_margin"] > 0
    assert outcome.metrics["eval_loss"] < before["eval_loss"]
    assert "eval_perplexity" not in outcome.metrics  # a DPO loss is no language-model loss
    evaluated = [d for kind, _, d in reporter.events if kind == "metrics" and "eval_reward_margin" in (d or {})]
    assert evaluated[0]["step"] == 0 and {"eval_reward_chosen", "eval_reward_rejected"} <= set(evaluated[-1])
    logged = [d for kind, _, d in reporter.events if kind == "metrics" and "train_loss" in (d or {})]
    assert logged and "reward_accuracy" in logged[-1]
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "model" / "finetune_service.json").read_text())["plan"]["method"] == "dpo"


def test_dpo_with_lora_stores_the_adapter_only(base_models_dir, tmp_path):
    adapter = {"type": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["c_attn"], "merge": False}
    reporter = Recorder()
    outcome = train(_spec(base_models_dir, tmp_path, adapter=adapter, learning_rate=5e-3), *_files(tmp_path),
                    tmp_path / "model", reporter, progress_interval_s=0)
    assert outcome.metrics["eval_reward_margin"] > 0
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files and "ref" not in files
    assert any("LoRA adapter: training" in message for _, message, _ in reporter.events)


def test_dpo_resumes_from_its_checkpoint_and_retries_out_of_memory(base_models_dir, tmp_path):
    spec = _spec(base_models_dir, tmp_path, checkpoint_every=10, n_epochs=1)
    stopped = train(spec, *_files(tmp_path), tmp_path / "model", PauseAtStep(5), progress_interval_s=0)
    assert stopped.stopped == "pause" and latest_checkpoint(spec.checkpoint_dir).name == "checkpoint-5"
    spec.resume_from = latest_checkpoint(spec.checkpoint_dir)
    reporter = Recorder()
    outcome = train(spec, *_files(tmp_path), tmp_path / "model", reporter, progress_interval_s=0,
                    extra_callbacks=[OutOfMemoryAbove(4)])
    assert outcome.steps == 15 and outcome.hyperparameters["per_device_batch_size"] == 4
    assert outcome.hyperparameters["gradient_accumulation_steps"] == 2
    assert any(message.startswith("Resuming from checkpoint") for _, message, _ in reporter.events)
    assert reporter.before is None  # measured on the first run, not again on resuming


def test_a_prompt_that_leaves_no_room_fails_naming_its_line(base_models_dir, tmp_path):
    spec = _spec(base_models_dir, tmp_path)
    rows = data.preference(120)
    rows[9]["input"]["messages"][-1]["content"] = " ".join(["the movie was great"] * 80)
    (tmp_path / "train.jsonl").write_bytes(data.jsonl(rows))
    with pytest.raises(TrainingError) as failure:
        train(spec, *_files(tmp_path), tmp_path / "model", Recorder(), progress_interval_s=0)
    assert failure.value.code == "prompt_too_long" and "Line 10 of training_file" in failure.value.message
    assert "max_seq_length" in failure.value.message


# --- end to end, with a real worker --------------------------------------------------------------

def test_openai_sdk_runs_a_dpo_job_and_reads_its_events_and_checkpoints(pg_stack):
    from openai import OpenAI

    client = OpenAI(base_url=f"{pg_stack.url}/v1", api_key=pg_stack.key, max_retries=0)
    uploaded = client.files.create(file=("pairs.jsonl", _pairs(120)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", _pairs(24, seed=1)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny/gpt2", training_file=uploaded.id, validation_file=valid.id, seed=1,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2, "batch_size": 8,
                                                            "learning_rate_multiplier": 20}}},
        extra_body={"chat_template": data.CHATML})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    done = pg_stack.wait_for_job(job.id)
    assert done["status"] == "succeeded", (done, pg_stack.log()[-3000:])
    evaluation = done["evaluation"]
    assert evaluation["metric"] == "eval_reward_accuracy" and evaluation["before"] == 0.5
    assert evaluation["after"] > 0.5 and evaluation["summary"].startswith("eval reward accuracy 0.50 → ")

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any("→" in e.message and "ready" in e.message for e in events)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and getattr(checkpoints[0].metrics, "eval_reward_accuracy", None) is not None
    with pg_stack.client() as c:
        series = c.get(f"/v1/fine_tuning/jobs/{job.id}/metrics").json()["data"]
        assert series[0]["step"] == 0 and series[0]["eval_reward_accuracy"] == 0.5
        assert any("reward_accuracy" in point for point in series[1:])
        csv = c.get(f"/v1/files/{done['result_files'][0]}/content").text
        assert "eval_reward_accuracy" in csv.splitlines()[0]
        answer = c.post("/v1/chat/completions", json={"model": done["fine_tuned_model"], "max_tokens": 3,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
