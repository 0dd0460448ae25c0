"""Experiment trackers (`integrations` on job create): a real job through a live stack logs to W&B (offline
mode, its run folder read back), to MLflow (an SQLite store, read back with MLflow's client) and to
TensorBoard (event files downloaded from the job's result file and read back); bad integrations are
refused with a 400 naming the field, and a tracker that cannot start fails the job before it trains."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, upload
from tests.support.live import LiveStack

JOBS = "/v1/fine_tuning/jobs"
FAST = {"n_epochs": 3, "learning_rate": 2e-3, "batch_size": 16}
INTEGRATIONS = [
    {"type": "wandb", "wandb": {"project": "reviews", "name": "tiny-bert-a", "tags": ["nightly", "tiny"]}},
    {"type": "mlflow", "mlflow": {"experiment_name": "reviews", "run_name": "tiny-bert-a", "tags": {"team": "search"}}},
    {"type": "tensorboard"},
]


# --- refused at create: the in-process app, whose operator enabled no tracker ---

def _refused(client, integrations, param: str, code: str | None = None) -> str:
    response = client.post(JOBS, json={"model": "tiny/bert", "training_file": "file-x", "integrations": integrations})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if code:
        assert error["code"] == code, error
    assert client.get(JOBS).json()["data"] == []
    return error["message"]


@pytest.mark.parametrize("integrations, param", [
    ([{"type": "comet"}], "integrations[0].type"),
    ([{"type": "tensorboard"}, {"type": "neptune"}], "integrations[1].type"),
    ([{"type": "tensorboard"}] * 4, "integrations"),
    ([{"type": "tensorboard", "tensorboard": {"log_dir": "/etc"}}], "integrations[0].tensorboard.log_dir"),
    ([{"type": "tensorboard", "extra": 1}], "integrations[0].extra"),
    (["wandb"], "integrations[0]"),
])
def test_malformed_integrations_name_the_field(client, integrations, param):
    _refused(client, integrations, param)


def test_a_tracker_the_operator_has_not_enabled_is_refused(client):
    message = _refused(client, [{"type": "tensorboard"}, {"type": "wandb", "wandb": {"project": "p"}}],
                       "integrations[1].type", code="integration_unavailable")
    assert "FT_INTEGRATIONS" in message and "tensorboard" in message
    _refused(client, [{"type": "mlflow"}], "integrations[0].type", code="integration_unavailable")


@pytest.fixture()
def trackers_enabled(monkeypatch):
    from app.config import get_settings

    monkeypatch.setattr(get_settings(), "integrations", ["wandb", "mlflow"])
    monkeypatch.setattr(get_settings(), "mlflow_tracking_uri", "sqlite:////nonexistent/mlflow.db")


@pytest.mark.parametrize("integration, param", [
    ({"type": "wandb"}, "integrations[0].wandb"),
    ({"type": "wandb", "wandb": {}}, "integrations[0].wandb.project"),
    ({"type": "wandb", "wandb": {"project": "a/b"}}, "integrations[0].wandb.project"),
    ({"type": "wandb", "wandb": {"project": "p" * 129}}, "integrations[0].wandb.project"),
    ({"type": "wandb", "wandb": {"project": "p", "name": "x\ny"}}, "integrations[0].wandb.name"),
    ({"type": "wandb", "wandb": {"project": "p", "tags": ["t"] * 21}}, "integrations[0].wandb.tags"),
    ({"type": "wandb", "wandb": {"project": "p", "tags": ["ok", "t" * 65]}}, "integrations[0].wandb.tags[1]"),
    ({"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}, "integrations[0].wandb.api_key"),
    ({"type": "wandb", "mlflow": {}}, "integrations[0].mlflow"),
    ({"type": "mlflow", "mlflow": {"tracking_uri": "http://evil"}}, "integrations[0].mlflow.tracking_uri"),
    ({"type": "mlflow", "mlflow": {"tags": {f"k{i}": "v" for i in range(21)}}}, "integrations[0].mlflow.tags"),
    ({"type": "mlflow", "mlflow": {"tags": {"team": "v" * 501}}}, "integrations[0].mlflow.tags.team"),
    ({"type": "mlflow", "mlflow": {"tags": {"mlflow.user": "root"}}}, "integrations[0].mlflow.tags.mlflow.user"),
    ({"type": "mlflow", "mlflow": {"experiment_name": "e" * 129}}, "integrations[0].mlflow.experiment_name"),
])
def test_bad_options_name_the_field(client, trackers_enabled, integration, param):
    _refused(client, [integration], param)


def test_each_tracker_once(client, trackers_enabled):
    assert "twice" in _refused(client, [{"type": "mlflow"}, {"type": "mlflow"}], "integrations[1].type")


def test_accepted_integrations_are_on_the_job(client, trackers_enabled):
    training = upload(client, EXAMPLES / "sentiment.csv").json()["id"]
    job = client.post(JOBS, json={"model": "tiny/bert", "training_file": training, "integrations": INTEGRATIONS})
    assert job.status_code == 200, job.text
    assert job.json()["integrations"] == INTEGRATIONS
    assert client.get(f"{JOBS}/{job.json()['id']}").json()["integrations"] == INTEGRATIONS
    plain = client.post(JOBS, json={"model": "tiny/bert", "training_file": training}).json()
    assert plain["integrations"] == []


# --- a tracker that cannot start: the pure training core fails the job before it trains ---

def test_a_tracker_that_cannot_start_fails_before_training(base_models_dir, tmp_path, monkeypatch):
    from app.data.scan import scan_file
    from app.ml import hyperparams
    from app.ml.tasks import get_task
    from worker.callbacks import NullReporter
    from worker.trackers import tracker_runs
    from worker.training import DataFile, TrainingError, TrainingSpec, train

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no saved login either
    monkeypatch.setenv("HOME", str(tmp_path))
    mapping = {"text": "text", "label": "label"}
    plan = get_task("text-classification").plan(mapping, scan_file(EXAMPLES / "sentiment.csv").profile(), None)
    resolved = hyperparams.resolve_hyperparameters(FAST, 200, 128, 30)
    runs = tracker_runs([INTEGRATIONS[0]], job_id="ftjob-core", project_id="proj-core", mlflow_tracking_uri="")

    class Steps(NullReporter):
        started = False

        def progress(self, progress, metrics=None):
            self.started = True

    reporter = Steps()
    spec = TrainingSpec("text-classification", str(base_models_dir / "tiny" / "bert"), mapping, plan, resolved,
                        tensorboard_dir=tmp_path / "tb", integrations=runs)
    with pytest.raises(TrainingError) as failure:
        train(spec, DataFile(EXAMPLES / "sentiment.csv", "csv"), None, tmp_path / "model", reporter,
              progress_interval_s=0)
    assert failure.value.code == "integration_failed" and "Weights & Biases" in failure.value.message
    assert not reporter.started and not (tmp_path / "model").exists()


def test_a_resumed_job_carries_on_its_mlflow_run(tmp_path, monkeypatch):
    """Pause, then resume (a new attempt, maybe on another worker): the second attempt finds the run the
    first opened by the job's tag, instead of opening another; and the environment is put back."""
    from mlflow import MlflowClient

    from worker.callbacks import NullReporter
    from worker.trackers import tracker_runs, tracking

    monkeypatch.delenv("MLFLOW_MAX_LOG_PARAMS", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracker_runs([INTEGRATIONS[1]], job_id="ftjob-resumed", project_id="proj-r", mlflow_tracking_uri=uri)
    for outcome in ("paused", "succeeded"):
        with tracking(runs, tmp_path / "tb", tmp_path, {"learning_rate": 2e-3}, NullReporter()) as tracked:
            assert tracked.report_to == ["mlflow"] and len(tracked.callbacks) == 1  # TensorBoard's, always
            assert os.environ["MLFLOW_MAX_LOG_PARAMS"] == "0"
            tracked.outcome = outcome
    assert "MLFLOW_MAX_LOG_PARAMS" not in os.environ
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("reviews").experiment_id])
    assert [(run.info.run_name, run.info.status) for run in found] == [("tiny-bert-a", "FINISHED")]
    assert found[0].data.params == {"learning_rate": "0.002"}


# --- a real job through a live stack, every tracker read back ---

@pytest.fixture(scope="module")
def tracked(base_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked-stack")
    stack = LiveStack(root, base_models_dir, integrations="wandb,mlflow",
                      mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    # The operator's W&B settings: offline, runs kept in a folder to sync later.
    stack.env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"),
                      **{f"WANDB_{name}_DIR": str(root / f"wandb-{name.lower()}")
                         for name in ("CONFIG", "CACHE", "DATA")}})
    (root / "wandb").mkdir()
    with stack.running():
        with stack.client() as c:
            train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
            valid = upload(c, EXAMPLES / "sentiment_validation.csv").json()["id"]
            created = c.post(JOBS, json={"model": "tiny/bert", "training_file": train, "validation_file": valid,
                                         "hyperparameters": FAST, "integrations": INTEGRATIONS})
            assert created.status_code == 200, created.text
        job = stack.wait_for_job(created.json()["id"])
        assert job["status"] == "succeeded", (job, stack.log())
        with stack.client() as c:
            series = c.get(f"{JOBS}/{job['id']}/metrics").json()["data"]
        yield stack, root, job, series


def _losses(series) -> dict[int, float]:
    return {point["step"]: point["train_loss"] for point in series if "train_loss" in point}


def test_the_job_shows_its_integrations_and_says_where_it_logs(tracked):
    stack, _, job, _ = tracked
    assert job["integrations"] == INTEGRATIONS
    messages = [event["message"] for event in stack.events(job["id"])]
    assert any(m.startswith("Logging to Weights & Biases: run tiny-bert-a in reviews") for m in messages), messages
    assert any(m.startswith("Logging to MLflow: run tiny-bert-a") for m in messages), messages


def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): W&B's LevelDB-style log of protobuf records, 32 KiB
    blocks of chunks, each with a 7-byte header (checksum, length, type), after a 7-byte file header."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            yield Record.FromString(pending)
            pending = b""


def test_wandb_offline_run_holds_the_jobs_metrics(tracked):
    _, root, job, series = tracked
    runs = list((root / "wandb" / "wandb").glob(f"offline-run-*-{job['id']}/run-{job['id']}.wandb"))
    assert len(runs) == 1, list((root / "wandb").rglob("*"))
    run, config, history = None, {}, []
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the run's first config comes with it, later updates on their own
            run = record.run if kind == "run" else run
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    assert (run.project, run.display_name, list(run.tags)) == ("reviews", "tiny-bert-a", ["nightly", "tiny"])
    assert config["fine_tuning_job_id"] == job["id"] and config["hyperparameters"]["learning_rate"] == 2e-3
    logged = {point["train/global_step"]: point["train/loss"] for point in history if "train/loss" in point}
    assert logged and logged == pytest.approx(_losses(series))
    accuracy = [point["eval/accuracy"] for point in history if "eval/accuracy" in point]
    assert accuracy[-1] == pytest.approx(job["metrics"]["eval_accuracy"])  # the final evaluation too


def test_mlflow_run_holds_params_and_metrics(tracked):
    from mlflow import MlflowClient

    stack, root, job, series = tracked
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reviews")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # one run, though the final evaluation came after training ended
    run = runs[0]
    assert (run.info.run_name, run.info.status) == ("tiny-bert-a", "FINISHED")
    assert run.data.tags["team"] == "search" and run.data.tags["finetune.job_id"] == job["id"]
    assert float(run.data.params["learning_rate"]) == 2e-3 and run.data.params["n_epochs"] == "3"
    assert "output_dir" not in run.data.params  # the job's hyperparameters, not 150 TrainingArguments
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert losses and losses == pytest.approx(_losses(series))
    assert run.data.metrics["eval_accuracy"] == pytest.approx(job["metrics"]["eval_accuracy"])


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under ``folder``: TFRecords (length, its CRC, an Event protobuf,
    its CRC) read with tensorboardX's protobuf classes."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    for path in folder.rglob("events.out.tfevents.*"):
        data, position = path.read_bytes(), 0
        while position + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[position:position + 8])
            event = Event.FromString(data[position + 12:position + 12 + length])
            position += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag][event.step] = value.simple_value
    return scalars


def test_tensorboard_events_are_a_downloadable_result_file(tracked, tmp_path):
    stack, _, job, series = tracked
    with stack.client() as c:
        files = {c.get(f"/v1/files/{file_id}").json()["filename"]: file_id for file_id in job["result_files"]}
        assert set(files) == {f"{job['id']}_metrics.csv", f"{job['id']}_tensorboard.tar.gz"}
        archive = c.get(f"/v1/files/{files[job['id'] + '_tensorboard.tar.gz']}/content")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as unpacked:
        names = unpacked.getnames()
        unpacked.extractall(tmp_path, filter="data")
    assert names and all(name.startswith(f"{job['id']}/events.out.tfevents.") for name in names)
    scalars = tensorboard_scalars(tmp_path / job["id"])  # what `tensorboard --logdir` would show
    assert scalars["train/loss"] == pytest.approx(_losses(series))
    assert 0 in scalars["eval/accuracy"]  # the evaluation before the first step…
    final_step = max(point["step"] for point in series)
    assert scalars["eval/accuracy"][final_step] == pytest.approx(job["metrics"]["eval_accuracy"])  # …and the last
    assert not [tag for tag in scalars if "text_summary" in tag]  # no TrainingArguments text (server paths)
