"""Serving under load and through the ecosystem's clients: concurrent requests to several models and
LoRA adapters (two sharing one base) are batched and each still gets its own model's answer;
huggingface_hub's InferenceClient parses every task's answers; a predictions-only replica serves the
same models without the control plane."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.live import LiveStack
from tests.support.task_models import CASES

TEXTS = ["the movie was great", "the plot was dull", "a terrible boring film", "wonderful acting",
         "the team won and new phone released", "markets fell sharply today", "good fun", "bad script bad actors"]
QA = CASES["question-answering"][2]


def _metric(text: str, name: str) -> float:
    """A counter summed over its labels (tasks: /metrics names no models)."""
    return sum(float(v) for v in re.findall(rf'^{name}{{task="[^"]*"}} ([0-9.e+]+)$', text, re.M))


def _close(a, b, tol: float = 1e-4) -> bool:
    """Equal answers: same structure and labels, scores within float noise of padding."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def test_concurrent_clients_get_their_own_models_answers(pg_stack, task_models):
    served = {key: task_models[key]["fine_tuned_model"] for key in [
        ("text-classification", "full"), ("text-classification", "lora"), ("text-classification", "lora-2"),
        ("multi-label-classification", "full"), ("multi-label-classification", "lora"),
        ("question-answering", "full"), ("question-answering", "lora"), ("token-classification", "full")]}
    rng = random.Random(0)
    calls = []
    for _ in range(240):
        key = rng.choice(list(served))
        single = QA if key[0] == "question-answering" else rng.choice(TEXTS)
        calls.append((served[key], single if rng.random() < 0.7 else [single, single]))

    with pg_stack.client() as c:
        # Reference: each distinct request alone, one after the other — an unbatched forward of its model.
        reference = {}
        for model, inputs in calls:
            key = (model, repr(inputs))
            if key not in reference:
                response = c.post(f"/v1/models/{model}/predict", json={"inputs": inputs})
                assert response.status_code == 200, response.text
                reference[key] = response.json()
        before = c.get("/metrics").text

    def call(item):
        model, inputs = item
        with httpx.Client(base_url=pg_stack.url, headers={"Authorization": f"Bearer {pg_stack.key}"},
                          timeout=120) as client:
            return client.post(f"/v1/models/{model}/predict", json={"inputs": inputs})

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, calls))
    for (model, inputs), response in zip(calls, responses):
        assert response.status_code == 200, response.text
        assert _close(response.json(), reference[(model, repr(inputs))]), (model, inputs, response.json())

    with pg_stack.client() as c:
        after = c.get("/metrics").text
    requests = _metric(after, "finetune_predict_requests_total") - _metric(before, "finetune_predict_requests_total")
    batches = _metric(after, "finetune_predict_batches_total") - _metric(before, "finetune_predict_batches_total")
    assert requests == len(calls) and batches < requests, (requests, batches)  # some requests were coalesced
    # The two sentiment adapters (same base model, same labels) share one base in memory, so fewer
    # bases are loaded than adapters (whatever other tests loaded before).
    adapters = float(re.search(r"^finetune_model_cache_adapters ([0-9.]+)$", after, re.M).group(1))
    bases = float(re.search(r"^finetune_model_cache_shared_bases ([0-9.]+)$", after, re.M).group(1))
    assert adapters >= 4 and bases <= adapters - 1, after


def test_a_crowd_on_one_model_is_served_in_few_batches(pg_stack, task_models):
    model = task_models[("text-classification", "full")]["fine_tuned_model"]
    with pg_stack.client() as c:
        expected = c.post(f"/v1/models/{model}/predict", json={"inputs": TEXTS}).json()
        before = c.get("/metrics").text

    def call(i):
        with httpx.Client(base_url=pg_stack.url, headers={"Authorization": f"Bearer {pg_stack.key}"},
                          timeout=120) as client:
            return client.post(f"/v1/models/{model}/predict", json={"inputs": TEXTS[i % len(TEXTS)]})

    with ThreadPoolExecutor(max_workers=48) as pool:
        responses = list(pool.map(call, range(96)))
    for i, response in enumerate(responses):
        assert _close(response.json(), [expected[i % len(TEXTS)]]), response.text
    with pg_stack.client() as c:
        after = c.get("/metrics").text
    requests = _metric(after, "finetune_predict_requests_total") - \
        _metric(before, "finetune_predict_requests_total")
    batches = _metric(after, "finetune_predict_batches_total") - \
        _metric(before, "finetune_predict_batches_total")
    # Unbatched, 96 requests would be 96 forwards. At least two requests per forward on average, whatever
    # else the machine runs (`make test` runs two test processes; a loaded CPU spreads arrivals out).
    # How large batches grow under load is measured in bench/, not asserted here.
    assert requests == 96 and batches <= 48, (requests, batches)


def test_concurrent_chat_completions_share_batches_and_seeded_samples_stay_reproducible(pg_stack, task_models):
    """Greedy chat requests arriving together are generated in shared (left-padded) batches, each with
    the answer it gets alone; a seeded sample runs apart, so the same seed gives the same text in a crowd."""
    model = task_models[("chat", "full")]["fine_tuned_model"]

    def chat(client, text, **extra):
        reply = client.post("/v1/chat/completions", json={
            "model": model, "max_tokens": 6, **extra,
            "messages": [{"role": "system", "content": "rate the review"}, {"role": "user", "content": text}]})
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    sampled = {"temperature": 1.0, "seed": 11}
    with pg_stack.client() as c:
        alone = {text: chat(c, text) for text in TEXTS}
        sample = chat(c, "a film", **sampled)
        before = c.get("/metrics").text

    def call(i):
        with httpx.Client(base_url=pg_stack.url, headers={"Authorization": f"Bearer {pg_stack.key}"},
                          timeout=120) as client:
            return chat(client, "a film", **sampled) if i % 8 == 7 else chat(client, TEXTS[i % len(TEXTS)])

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(call, range(48)))
    with pg_stack.client() as c:
        after = c.get("/metrics").text
    for i, answer in enumerate(answers):
        assert answer == (sample if i % 8 == 7 else alone[TEXTS[i % len(TEXTS)]]), (i, answer)
    requests = _metric(after, "finetune_predict_requests_total") - \
        _metric(before, "finetune_predict_requests_total")
    batches = _metric(after, "finetune_predict_batches_total") - \
        _metric(before, "finetune_predict_batches_total")
    assert requests == 48 and batches < 48 - 6, (requests, batches)  # the 6 seeded samples ran alone


def test_huggingface_inference_client_parses_every_task(pg_stack, task_models, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    # The suite runs with HF_HUB_OFFLINE=1 (no Hub downloads); this server is local, not the Hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def client(key) -> InferenceClient:
        model = task_models[key]["fine_tuned_model"]
        return InferenceClient(base_url=f"{pg_stack.url}/v1/models/{model}/predict", api_key=pg_stack.key)

    labels = client(("text-classification", "lora")).text_classification("the movie was great")
    assert {x.label for x in labels} == {"good", "bad"} and abs(sum(x.score for x in labels) - 1) < 1e-4
    entities = client(("token-classification", "full")).token_classification("anna rossi visited oslo today")
    assert [(e.entity_group, e.word, e.start, e.end) for e in entities] == [("PER", "anna rossi", 0, 10),
                                                                            ("LOC", "oslo", 19, 23)]
    answer = client(("question-answering", "lora")).question_answering(**QA)
    assert (answer.answer, answer.start, answer.end) == ("movie", 16, 21) and 0 < answer.score <= 1
    generated = client(("text-generation", "full")).text_generation("the plot was dull =>", max_new_tokens=3)
    assert isinstance(generated, str)
    summary = client(("summarization", "full")).summarization("alice and bob movie story plot great")
    assert isinstance(summary.summary_text, str) and summary.summary_text

    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as refused:
        client(("text-generation", "full")).text_generation("hi", temperature=9.0)
    assert refused.value.response.status_code == 400
    assert "temperature must be between" in refused.value.server_message


def test_prediction_only_replica_serves_without_the_control_plane(pg_stack, task_models, base_models_dir,
                                                                 tmp_path):
    replica = LiveStack(tmp_path, base_models_dir, database_url=pg_stack.env["FT_DATABASE_URL"],
                        embedded_worker=False, key=pg_stack.key, serve_mode="predictions",
                        storage_dir=str(pg_stack.root / "data" / "storage"))
    model = task_models[("text-classification", "lora")]["fine_tuned_model"]
    with replica.running(), replica.client() as c:
        assert c.get("/readyz").json()["checks"].keys() == {"database", "storage"}
        answer = c.post(f"/v1/models/{model}/predict", json={"inputs": "the movie was great"})
        assert answer.status_code == 200 and answer.json()[0][0]["label"] in ("good", "bad")
        assert any(m["id"] == model for m in c.get("/v1/models").json()["data"])
        # The control plane is elsewhere: no uploads or jobs here.
        assert c.get("/v1/fine_tuning/jobs").status_code == 404
        assert c.post("/v1/files", files={"file": ("x.csv", b"a\n1\n")}).status_code == 404
