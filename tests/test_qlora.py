"""QLoRA (adapter.quantization "4bit"): the job request checked and resolved by the planner, the 4-bit load
arguments reaching from_pretrained through every task, and — on these CPU machines — the refusal the
training core gives at once, before any tokenizing or loading, alone and through the live stack. The
GPU side (4-bit memory, falling loss) is bench/qlora_check.py's to prove."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from app.data.scan import scan_file
from app.ml import hyperparams
from app.ml.adapters import quantized_load_kwargs, resolve_adapter
from app.ml.tasks import TASKS, FieldProblem, get_task
from tests.conftest import upload
from tests.support import task_data as data
from worker.callbacks import NullReporter
from worker.training import DataFile, TrainingError, TrainingSpec, train

QLORA = {"type": "lora", "r": 8, "quantization": "4bit"}


def _job(client, **body):
    f = upload(client, "data.jsonl", data.jsonl(data.prompt_completion(40))).json()
    return client.post("/v1/fine_tuning/jobs", json={"model": "tiny/gpt2", "training_file": f["id"], **body})


# --- the planner (in-process API) ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["adapter", "hyperparameters"])
def test_a_4bit_adapter_job_is_accepted_and_shows_its_quantization(client, where):
    body = {"adapter": QLORA} if where == "adapter" else {"hyperparameters": {"n_epochs": 1, "adapter": QLORA}}
    response = _job(client, **body)
    assert response.status_code == 200, response.text
    adapter = response.json()["hyperparameters"]["adapter"]
    assert adapter["quantization"] == "4bit" and adapter["merge"] is False
    assert adapter["r"] == 8 and adapter["target_modules"] == ["c_attn"]  # the other keys as before


def test_an_adapter_without_quantization_resolves_it_to_null(client):
    adapter = _job(client, adapter={"type": "lora"}).json()["hyperparameters"]["adapter"]
    assert "quantization" in adapter and adapter["quantization"] is None


@pytest.mark.parametrize("where", ["adapter", "hyperparameters"])
@pytest.mark.parametrize(("adapter", "param", "words"), [
    ({**QLORA, "quantization": "8bit"}, "adapter.quantization", "4bit"),
    ({**QLORA, "merge": True}, "adapter.merge", "4-bit base"),
])
def test_bad_quantization_requests_are_refused_naming_the_field(client, where, adapter, param, words):
    body = {"adapter": adapter} if where == "adapter" else {"hyperparameters": {"adapter": adapter}}
    response = _job(client, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    # Inside hyperparameters the schema names the full path (hyperparameters.adapter.quantization).
    assert error["param"].endswith(param) and words in error["message"], error
    assert error["param"] == param or where == "hyperparameters"
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_resolve_adapter_checks_quantization_without_the_schema(base_models_dir):
    """Callers that hand resolve_adapter a plain dict (no pydantic in between) get the same refusal."""
    with pytest.raises(FieldProblem) as problem:
        resolve_adapter({"quantization": "int4"}, "gpt2", base_models_dir / "tiny" / "gpt2")
    assert problem.value.param == "adapter.quantization"


# --- the 4-bit load --------------------------------------------------------------------------------

def test_4bit_load_arguments_are_nf4_with_bf16_compute_and_double_quantization():
    import torch

    assert quantized_load_kwargs({}) == {} and quantized_load_kwargs({"adapter": {"r": 8}}) == {}
    kwargs = quantized_load_kwargs({"adapter": QLORA})
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and kwargs["device_map"] == {"": 0}


# Tasks whose load_model override does not yet pass load_kwargs on to Task.load_model (their files
# belong to other changes): strict, so the marker must go once they do.
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_passes_the_4bit_arguments_to_from_pretrained(monkeypatch, name):
    task, seen = get_task(name), {}

    class Recording:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.update(kwargs)
            return SimpleNamespace(config=SimpleNamespace(pad_token_id=0, eos_token_id=0))

    monkeypatch.setattr(task, "_auto_class", lambda: Recording)
    monkeypatch.setattr(task, "model_kwargs", lambda plan: {})
    plan = {"target_mean": 0.0, "target_std": 1.0, "target_name": "score"}
    task.load_model("unused", plan, **quantized_load_kwargs({"adapter": QLORA}))
    assert seen["quantization_config"].load_in_4bit and seen["device_map"] == {"": 0}


# --- the training core, on a machine without CUDA ----------------------------------------------------

class Recorder(NullReporter):
    def __init__(self):
        self.events = []

    def event(self, message, *, level="info", type="message", data=None):
        self.events.append(message)


def test_the_core_refuses_a_4bit_job_at_once_without_cuda(base_models_dir, tmp_path):
    task = get_task("text-generation")
    (tmp_path / "train.jsonl").write_bytes(data.jsonl(data.prompt_completion(40)))
    profile = scan_file(tmp_path / "train.jsonl").profile()
    mapping = task.detect(profile)
    plan = task.plan(mapping, profile, None)
    adapter = resolve_adapter(QLORA, "gpt2", base_models_dir / "tiny" / "gpt2")
    resolved = hyperparams.resolve_hyperparameters({"n_epochs": 1}, 40, 256, 20, False, task, adapter=adapter)
    spec = TrainingSpec("text-generation", str(base_models_dir / "tiny" / "gpt2"), mapping, plan, resolved)
    reporter = Recorder()
    started = time.monotonic()
    with pytest.raises(TrainingError) as failure:
        train(spec, DataFile(tmp_path / "train.jsonl", "jsonl"), None, tmp_path / "model", reporter)
    assert failure.value.code == "quantization_unavailable"
    assert "adapter.quantization '4bit'" in failure.value.message and "no CUDA device" in failure.value.message
    # Before any work: nothing tokenized (no "Tokenized …" event), no work folder, nothing saved.
    assert reporter.events == [] and not (tmp_path / "model.work").exists() and not (tmp_path / "model").exists()
    assert time.monotonic() - started < 5


# --- through the live stack ----------------------------------------------------------------------------

def test_a_4bit_job_fails_quickly_on_a_cpu_worker(pg_stack):
    with pg_stack.client() as c:
        f = upload(c, "data.jsonl", data.jsonl(data.prompt_completion(40))).json()
        job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/gpt2", "training_file": f["id"],
                                                   "hyperparameters": {"n_epochs": 1}, "adapter": QLORA})
        assert job.status_code == 200, job.text
        done = pg_stack.wait_for_job(job.json()["id"], timeout=120)
    assert done["status"] == "failed", (done, pg_stack.log())
    assert done["error"]["code"] == "quantization_unavailable" and "adapter.quantization" in done["error"]["message"]
    events = pg_stack.events(done["id"])
    assert not any(e["message"].startswith("Tokenized") for e in events), events
    # Timed from the worker taking the job, not from the queue: a worker still starting up (or two
    # cores shared with other tests) may take a while to pick it up, which says nothing of the refusal.
    started = next(e["created_at"] for e in events if e["message"].startswith("Job started"))
    assert done["finished_at"] - started < 60, events
