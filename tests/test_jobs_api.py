"""Job creation validates everything against the files before a job exists: each bad input answers
400 naming `param`, and creates nothing."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES, upload

JOBS = "/v1/fine_tuning/jobs"


def _file(client, name: str, text: str) -> str:
    return upload(client, name, text.encode()).json()["id"]


@pytest.fixture()
def sentiment(client) -> str:
    return upload(client, EXAMPLES / "sentiment.csv").json()["id"]


def _refused(client, body: dict, param: str, status: int = 400) -> str:
    response = client.post(JOBS, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert client.get(JOBS).json()["data"] == []  # nothing was created
    return error["message"]


def test_create_resolves_auto_hyperparameters(client, sentiment):
    job = client.post(JOBS, json={"model": "tiny/bert", "training_file": sentiment,
                                  "method": {"type": "supervised", "supervised": {"hyperparameters": {
                                      "n_epochs": "auto", "batch_size": 8, "learning_rate_multiplier": 2}}}}).json()
    hp = job["hyperparameters"]
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert hp["batch_size"] == 8 and isinstance(hp["n_epochs"], int) and hp["n_epochs"] >= 3
    assert hp["learning_rate"] == pytest.approx(2 * 1e-4)  # a narrow model: the width-scaled rate, at its cap
    assert job["method"]["supervised"]["hyperparameters"] == hp
    assert job["column_mapping"] == {"text": "text", "label": "label"} and job["task"] == "text-classification"
    assert isinstance(job["seed"], int)


def test_integer_labels_any_number_of_classes(client):
    rows = "\n".join(f"sample text number {i},{i % 5}" for i in range(50))
    file_id = _file(client, "five.csv", "text,label\n" + rows + "\n")
    job = client.post(JOBS, json={"model": "tiny/bert", "training_file": file_id, "seed": 7}).json()
    assert job["task"] == "text-classification" and job["seed"] == 7


def test_unknown_model(client, sentiment):
    message = _refused(client, {"model": "gpt-5", "training_file": sentiment}, "model")
    assert "tiny/bert" in message  # says what is on offer


def test_pickle_only_model_is_refused(client, sentiment):
    assert "safetensors" in _refused(client, {"model": "tiny/pickled", "training_file": sentiment}, "model")


def test_unknown_and_foreign_training_file(client, other_client, sentiment):
    _refused(client, {"model": "tiny/bert", "training_file": "file-nope"}, "training_file")
    response = other_client.post(JOBS, json={"model": "tiny/bert", "training_file": sentiment})
    assert response.status_code == 400 and response.json()["error"]["param"] == "training_file"


def test_file_with_errors_is_refused(client):
    broken = _file(client, "broken.jsonl", '{"text": "a", "label": "x"}\n{"text": \n')
    assert "line 2" in _refused(client, {"model": "tiny/bert", "training_file": broken}, "training_file")


def test_missing_column(client, sentiment):
    message = _refused(client, {"model": "tiny/bert", "training_file": sentiment,
                                "column_mapping": {"text": "sentence"}}, "column_mapping.text")
    assert "text, label" in message


def test_unknown_role(client, sentiment):
    _refused(client, {"model": "tiny/bert", "training_file": sentiment, "column_mapping": {"answer": "text"}},
             "column_mapping.answer")


def test_one_class_only(client):
    file_id = _file(client, "one.csv", "text,label\na,pos\nb,pos\nc,pos\n")
    assert "only one class" in _refused(client, {"model": "tiny/bert", "training_file": file_id},
                                        "column_mapping.label")


def test_missing_labels_name_their_lines(client):
    file_id = _file(client, "gaps.csv", "text,label\na,pos\nb,\nc,neg\nd,\n")
    message = _refused(client, {"model": "tiny/bert", "training_file": file_id}, "column_mapping.label")
    assert "lines 3, 5" in message


def test_regression_label_must_be_numeric(client):
    file_id = _file(client, "r.csv", "text,score\na,1.5\nb,2.25\nc,high\nd,0.5\n")
    message = _refused(client, {"model": "tiny/bert", "training_file": file_id, "task": "text-regression",
                                "column_mapping": {"text": "text", "label": "score"}}, "column_mapping.label")
    assert "line 4" in message


def test_fractional_labels_are_not_classes(client):
    file_id = _file(client, "f.csv", "text,label\na,1.5\nb,2.25\nc,0.5\n")
    assert "text-regression" in _refused(client, {"model": "tiny/bert", "training_file": file_id,
                                                  "task": "text-classification"}, "column_mapping.label")


def test_validation_labels_must_be_known(client, sentiment):
    valid = _file(client, "v.csv", "text,label\ngreat,positive\nmeh,neutral\n")
    assert "neutral" in _refused(client, {"model": "tiny/bert", "training_file": sentiment,
                                          "validation_file": valid}, "validation_file")


def test_unknown_task_and_undetectable_task(client, sentiment):
    _refused(client, {"model": "tiny/bert", "training_file": sentiment, "task": "translation-ish"}, "task")
    numbers = _file(client, "n.csv", "a,b\n1,2\n3,4\n")
    _refused(client, {"model": "tiny/bert", "training_file": numbers}, "task")


@pytest.mark.parametrize(("hyperparameters", "param"), [
    ({"n_epochs": 0}, "method.supervised.hyperparameters.n_epochs"),
    ({"learning_rate": 5}, "method.supervised.hyperparameters.learning_rate"),
    ({"n_epochs": "many"}, "method.supervised.hyperparameters.n_epochs"),
    ({"epochs": 3}, "method.supervised.hyperparameters.epochs"),
    ({"validation_split": 0.9}, "method.supervised.hyperparameters.validation_split"),
    ({"validation_split": -0.1}, "method.supervised.hyperparameters.validation_split"),
    ({"group_by_length": "sometimes"}, "method.supervised.hyperparameters.group_by_length"),
])
def test_bad_hyperparameters(client, sentiment, hyperparameters, param):
    _refused(client, {"model": "tiny/bert", "training_file": sentiment,
                      "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}, param)


def test_bad_fields(client, sentiment):
    _refused(client, {"model": "tiny/bert", "training_file": sentiment, "suffix": "no spaces/slashes"}, "suffix")
    _refused(client, {"model": "tiny/bert", "training_file": sentiment, "method": {"type": "reinforcement"}},
             "method.type")
    # DPO is offered, on preference pairs only.
    _refused(client, {"model": "tiny/bert", "training_file": sentiment, "method": {"type": "dpo"}}, "training_file")
    _refused(client, {"training_file": sentiment}, "model")
    _refused(client, {"model": "tiny/bert", "training_file": sentiment, "colum_mapping": {}}, "colum_mapping")
    response = client.post(JOBS, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


def test_idempotency_key(client, sentiment):
    body = {"model": "tiny/bert", "training_file": sentiment}
    first = client.post(JOBS, json=body, headers={"Idempotency-Key": "abc"}).json()
    again = client.post(JOBS, json=body, headers={"Idempotency-Key": "abc"}).json()
    assert first["id"] == again["id"] and len(client.get(JOBS).json()["data"]) == 1
    other = client.post(JOBS, json={**body, "suffix": "x"}, headers={"Idempotency-Key": "abc"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"


def test_list_filter_get_cancel_and_isolation(client, other_client, sentiment):
    ids = [client.post(JOBS, json={"model": "tiny/bert", "training_file": sentiment,
                                   "metadata": {"n": str(i)}}).json()["id"] for i in range(3)]
    page = client.get(JOBS, params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get(JOBS, params={"limit": 2, "after": page["last_id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    assert [j["id"] for j in client.get(JOBS, params={"metadata[n]": "1"}).json()["data"]] == [ids[1]]

    cancelled = client.post(f"{JOBS}/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert [j["id"] for j in client.get(JOBS, params={"status": "cancelled"}).json()["data"]] == [ids[0]]
    events = client.get(f"{JOBS}/{ids[0]}/events").json()["data"]
    assert events[0]["message"] == "Job cancelled." and events[0]["object"] == "fine_tuning.job.event"

    for method, path in (("get", f"{JOBS}/{ids[1]}"), ("post", f"{JOBS}/{ids[1]}/cancel"),
                         ("get", f"{JOBS}/{ids[1]}/events")):
        response = getattr(other_client, method)(path)
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert other_client.get(JOBS).json()["data"] == []


def test_models_listing(client):
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["tiny/bert"]["fine_tunable"] is True
    assert models["tiny/pickled"]["fine_tunable"] is False
    assert client.get("/v1/models/tiny/bert").json()["id"] == "tiny/bert"
    assert client.get("/v1/models/ft:tiny/bert::nope").status_code == 404
    refused = client.post("/v1/models/tiny/bert/predict", json={"inputs": "hi"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_fine_tuned"
