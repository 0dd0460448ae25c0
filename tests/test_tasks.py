"""Every task of the registry end to end through the API and a real worker, on tiny random models:
detection from the file's shape, validation before queueing, training full and with LoRA (adapter
only stored, or merged on request), evaluation with the task's metric, and predictions in the
Hugging Face wire format. Also the OpenAI completions routes, driven by the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import upload
from tests.support import task_data as data
from tests.support.task_models import CASES

@pytest.mark.parametrize(("builder", "task", "mapping"), [
    (data.question_answering, "question-answering", {"question": "question", "context": "context",
                                                     "answers": "answers"}),
    (data.summarization, "summarization", {"source": "source", "target": "target"}),
    (data.prompt_completion, "text-generation", {"prompt": "prompt", "completion": "completion"}),
    (data.chat, "text-generation", {"messages": "messages"}),
    (data.multi_label, "multi-label-classification", {"text": "text", "label": "labels"}),
])
def test_task_detected_from_the_files_shape(client, builder, task, mapping):
    f = upload(client, "data.jsonl", data.jsonl(builder(200))).json()
    assert (f["detected_task"], f["detected_column_mapping"]) == (task, mapping)


def _job_error(client, rows: list[dict], **body) -> dict:
    f = upload(client, "data.jsonl", data.jsonl(rows)).json()
    response = client.post("/v1/fine_tuning/jobs", json={"training_file": f["id"], **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]


COUNTDOWN = "{% for m in messages %}[{{ messages|length - loop.index }}] {{ m['content'] }}\n{% endfor %}"


def test_a_template_that_rewrites_earlier_turns_may_train_on_every_token(client):
    f = upload(client, "data.jsonl", data.jsonl(data.chat(20))).json()
    created = client.post("/v1/fine_tuning/jobs", json={
        "training_file": f["id"], "model": "tiny/gpt2", "chat_template": COUNTDOWN,
        "hyperparameters": {"completion_only_loss": False}})
    assert created.status_code == 200, created.text
    assert created.json()["hyperparameters"]["completion_only_loss"] is False


def test_bad_requests_are_refused_before_queueing(client):
    rows = data.question_answering(20)
    rows[4]["answers"]["answer_start"] = [0]
    error = _job_error(client, rows, model="tiny/bert")
    assert error["param"] == "column_mapping.answers" and "Line 5" in error["message"]

    error = _job_error(client, data.chat(20), model="tiny/gpt2")
    assert error["param"] == "chat_template" and "no chat template" in error["message"]
    error = _job_error(client, data.chat(20), model="tiny/gpt2", chat_template="{% for m in messages %}{{ m.oops(")
    assert error["param"] == "chat_template" and "does not render" in error["message"]
    # A template that numbers turns from the end renders each turn differently once more follow: the
    # assistant's tokens cannot be found, which is refused unless every token is to be trained on.
    error = _job_error(client, data.chat(20), model="tiny/gpt2", chat_template=COUNTDOWN)
    assert error["param"] == "chat_template" and "completion_only_loss" in error["message"]
    rows = data.chat(20)
    rows[7]["messages"] = [m for m in rows[7]["messages"] if m["role"] != "assistant"]
    error = _job_error(client, rows, model="tiny/gpt2", chat_template=data.CHATML)
    assert error["param"] == "column_mapping.messages" and "Line 8" in error["message"]

    error = _job_error(client, data.summarization(50), model="tiny/bert")
    assert error["param"] == "model" and "summarization" in error["message"]
    error = _job_error(client, data.multi_label(50), model="tiny/bert",
                       adapter={"type": "lora", "target_modules": ["q_proj"]})
    assert error["param"] == "adapter.target_modules" and "q_proj" in error["message"]
    error = _job_error(client, data.multi_label(50), model="tiny/bert",
                       hyperparameters={"completion_only_loss": False})
    assert error["param"] == "method.supervised.hyperparameters.completion_only_loss"
    rows = data.multi_label(20)
    rows[3]["labels"] = "sports"
    error = _job_error(client, rows, model="tiny/bert", task="multi-label-classification",
                       column_mapping={"text": "text", "label": "labels"})
    assert error["param"] == "column_mapping.label" and "line 4" in error["message"]
    # Nothing was created by any of the refusals.
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def _stored_files(stack, job: dict) -> set[str]:
    folder = next((stack.root / "data" / "storage" / "models").glob(f"*/{job['id']}"))
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def trained(task_models):
    return task_models


@pytest.mark.parametrize("task", list(CASES))
@pytest.mark.parametrize("variant", ["full", "lora"])
def test_task_trains_and_serves(pg_stack, trained, task, variant):
    job = trained[(task, variant)]
    assert job["task"] == task
    metrics = job["metrics"]
    stored = _stored_files(pg_stack, job)
    if variant == "lora":
        adapter = job["hyperparameters"]["adapter"]
        assert adapter["r"] == 8 and adapter["alpha"] == 16 and adapter["target_modules"]
        # Only the adapter (and a new task head inside it) is stored, never the base weights.
        assert {"adapter_model.safetensors", "adapter_config.json"} <= stored and "model.safetensors" not in stored
    else:
        assert "model.safetensors" in stored and "adapter_config.json" not in stored
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in stored)

    _, _, example = CASES[task]
    with pg_stack.client() as c:
        single = c.post(f"/v1/models/{job['fine_tuned_model']}/predict", json={"inputs": example})
        batch = c.post(f"/v1/models/{job['fine_tuned_model']}/predict", json={"inputs": [example, example]})
    assert single.status_code == 200 and batch.status_code == 200, (single.text, batch.text)
    single, batch = single.json(), batch.json()
    if task == "question-answering":
        # LoRA on a random tiny base learns less reliably than full training; chance is about 10%.
        floor = 80 if variant == "full" else 50
        assert metrics["eval_exact_match"] >= floor and metrics["eval_f1"] >= floor, metrics
        assert set(single) == {"answer", "score", "start", "end"}
        assert example["context"][single["start"]:single["end"]] == single["answer"]
        assert variant == "lora" or single["answer"] == "movie"
        assert batch == [single, single]
        # transformers' handle_impossible_answer: "no answer" competes with the spans (top_k 1,000 lists
        # every candidate: at most the 20 likeliest starts × 20 likeliest ends). This model never saw an
        # unanswerable question, so "no answer" ranks below the answer it learned.
        with pg_stack.client() as c:
            ranked = c.post(f"/v1/models/{job['fine_tuned_model']}/predict", json={
                "inputs": example, "parameters": {"top_k": 1000, "handle_impossible_answer": True}}).json()
        assert [(a["answer"], a["start"], a["end"]) for a in ranked].count(("", 0, 0)) == 1
        assert [a["score"] for a in ranked] == sorted((a["score"] for a in ranked), reverse=True)
        assert sum(a["score"] for a in ranked) <= 1 + 1e-6
        assert variant == "lora" or ranked[0]["answer"] == "movie"
    elif task == "summarization":
        assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"} <= set(metrics)
        # A 2-layer, 32-wide T5 from seeded random weights and a fixed vocabulary reaches about 0.28
        # here; untrained, it scores about zero.
        assert variant == "lora" or metrics["eval_rouge1"] >= 0.2, metrics
        assert set(single[0]) == {"summary_text"} and isinstance(single[0]["summary_text"], str)
        assert len(single) == 1 and batch == [single[0], single[0]]
    elif task == "text-generation":
        assert metrics["eval_perplexity"] > 1 and "eval_loss" in metrics
        assert variant == "lora" or metrics["eval_perplexity"] < 3, metrics  # random guessing: ~500
        assert len(single) == 1 and isinstance(single[0]["generated_text"], str)
    else:
        assert {"eval_f1_micro", "eval_f1_macro"} <= set(metrics)
        assert variant == "lora" or metrics["eval_f1_micro"] >= 0.6, metrics  # about 0.79 here
        labels = [entry["label"] for entry in single[0]]
        assert sorted(labels) == sorted(data.TOPICS) and all(0 <= e["score"] <= 1 for e in single[0])


def test_merged_adapter_is_a_standalone_model(pg_stack, trained):
    job = trained[("question-answering", "merged")]
    assert job["hyperparameters"]["adapter"]["merge"] is True
    stored = _stored_files(pg_stack, job)
    assert "model.safetensors" in stored and "adapter_config.json" not in stored
    config = json.loads((next((pg_stack.root / "data" / "storage" / "models").glob(f"*/{job['id']}"))
                         / "finetune_service.json").read_text())
    assert config["adapter"] is None
    with pg_stack.client() as c:
        answer = c.post(f"/v1/models/{job['fine_tuned_model']}/predict",
                        json={"inputs": CASES["question-answering"][2]}).json()
    context = CASES["question-answering"][2]["context"]
    assert context[answer["start"]:answer["end"]] == answer["answer"] and answer["answer"]
    # The merged weights answer as well as the adapter did when training ended.
    assert job["metrics"]["eval_exact_match"] >= 50, job["metrics"]


def test_chat_model_learned_the_assistant_turns_only(trained):
    job = trained[("chat", "full")]
    # Held-out rows (no validation file): loss on the assistant tokens, which the model learned.
    assert job["metrics"]["eval_perplexity"] < 3, job["metrics"]


def test_openai_sdk_chat_and_completions(pg_stack, trained):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{pg_stack.url}/v1", api_key=pg_stack.key, max_retries=0)
    chat_model = trained[("chat", "full")]["fine_tuned_model"]
    messages = [{"role": "system", "content": "rate the review"}, {"role": "user", "content": "the film was awful"}]
    reply = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=5)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content.strip() in ("good", "bad"), reply
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens >= 1

    chunks = list(client.chat.completions.create(model=chat_model, messages=messages, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same text either way
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens > 0

    completion_model = trained[("text-generation", "full")]["fine_tuned_model"]
    done = client.completions.create(model=completion_model, prompt="the plot was dull =>", max_tokens=3)
    assert done.object == "text_completion" and done.choices[0].text.strip() in ("good", "bad", "")
    pieces = list(client.completions.create(model=completion_model, prompt="the plot was dull =>", max_tokens=3,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text

    with pytest.raises(BadRequestError) as refused:
        client.chat.completions.create(model=trained[("question-answering", "full")]["fine_tuned_model"],
                                       messages=messages)
    assert refused.value.body["param"] == "model"
    with pytest.raises(BadRequestError) as no_template:
        client.chat.completions.create(model=completion_model, messages=messages)
    assert no_template.value.body["code"] == "no_chat_template"


def test_adapter_records_its_base_models_id(pg_stack, trained):
    """Serving looks the base model up by id in its own FT_BASE_MODELS_DIR (the worker's path is a
    fallback), so API and worker machines may keep base models in different folders."""
    job = trained[("multi-label-classification", "lora")]
    folder = next((pg_stack.root / "data" / "storage" / "models").glob(f"*/{job['id']}"))
    assert json.loads((folder / "finetune_service.json").read_text())["base_model"] == "tiny/bert"
    assert Path(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]).is_dir()


def test_lora_checkpoints_serve_on_their_own(pg_stack, trained):
    job = trained[("question-answering", "lora")]
    with pg_stack.client() as c:
        checkpoints = c.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        assert checkpoints, job
        answer = c.post(f"/v1/models/{checkpoints[0]['fine_tuned_model_checkpoint']}/predict",
                        json={"inputs": CASES["question-answering"][2]})
    assert answer.status_code == 200 and set(answer.json()) == {"answer", "score", "start", "end"}, answer.text


def test_bad_generation_parameters_name_the_field(pg_stack, trained):
    model = trained[("text-generation", "full")]["fine_tuned_model"]
    with pg_stack.client() as c:
        response = c.post(f"/v1/models/{model}/predict", json={"inputs": "hi", "parameters": {"temperature": 9}})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "parameters.temperature"
        response = c.post(f"/v1/models/{model}/predict", json={"inputs": {"question": "q"}})
        assert response.status_code == 400 and response.json()["error"]["param"] == "inputs"
        response = c.post("/v1/completions", json={"model": model, "prompt": "hi", "stream": True, "stop": [""]})
        assert response.status_code == 400 and response.json()["error"]["param"] == "stop"


def test_download_holds_weights_config_and_tokenizer_but_no_pickles(pg_stack, trained):
    import io
    import tarfile

    job = trained[("question-answering", "lora")]
    with pg_stack.client() as c:
        checkpoint = c.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
        downloads = {name: c.get(f"/v1/models/{name}/download") for name in
                     (job["fine_tuned_model"], checkpoint["fine_tuned_model_checkpoint"])}
        assert c.get("/v1/models/ft:nope:x:y/download").status_code == 404
    for name, response in downloads.items():
        assert response.status_code == 200 and response.headers["content-type"] == "application/gzip", name
        names = set(tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz").getnames())
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                "finetune_service.json"} <= names, names
        assert not any(n.endswith((".pt", ".pth", ".bin", ".pkl")) for n in names), names


@pytest.mark.parametrize(("task", "example"), [("token-classification", "anna rossi visited oslo today"),
                                               ("text-regression", "the plot was wonderful"),
                                               ("text-classification", "the plot was wonderful")])
def test_lora_on_the_remaining_tasks(pg_stack, trained, task, example):
    full, lora = trained[(task, "full")], trained[(task, "lora")]
    assert lora["hyperparameters"]["adapter"]["target_modules"] == ["query", "value"]  # BERT's default
    stored = _stored_files(pg_stack, lora)
    assert "adapter_model.safetensors" in stored and "model.safetensors" not in stored
    with pg_stack.client() as c:
        answers = [c.post(f"/v1/models/{job['fine_tuned_model']}/predict", json={"inputs": example}).json()
                   for job in (full, lora)]
    if task == "token-classification":
        assert all(isinstance(a, list) for a in answers)
        assert [(g["entity_group"], g["word"]) for g in answers[0]] == [("PER", "anna rossi"), ("LOC", "oslo")]
    else:  # the same HF text-classification shape for both; regression names its target column
        assert all(len(a) == 1 and {"label", "score"} <= set(a[0][0]) for a in answers)
        if task == "text-regression":
            assert answers[0][0][0]["label"] == "score" and 1.0 <= answers[0][0][0]["score"] <= 6.0
