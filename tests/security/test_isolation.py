"""The cross-tenant sweep: every route that takes an id, asked by another project about this project's
objects — read, modified, deleted — answers 404 and changes nothing; asked with this project's
predict-only key, it answers 403 wherever the predict scope does not reach. The table of routes is
checked against the live OpenAPI document, so a new route with an id cannot be left out."""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import upload_example

JOBS = "/v1/fine_tuning/jobs"
# Routes a predict key may call; every other route under /v1 needs a train (or admin) key.
PREDICT_SCOPE = {("GET", "/v1/models/{model_id}"), ("POST", "/v1/models/{model_id}/predict")}


@pytest.fixture(scope="module")
def owned(pg_stack, task_models) -> dict[str, str]:
    """One object of each kind, all of the stack's default project (whose task models exist already)."""
    chat = task_models[("text-generation", "full")]
    with pg_stack.client() as c:
        file_id = upload_example(c)
        job = c.post(JOBS, json={"model": "tiny/bert", "training_file": file_id}).json()["id"]
        c.post(f"{JOBS}/{job}/cancel")
        checkpoint = c.get(f"{JOBS}/{chat['id']}/checkpoints").json()["data"][0]["fine_tuned_model_checkpoint"]
        endpoint = c.post("/v1/webhooks", json={"url": "https://93.184.216.34/hooks/owner"}).json()["id"]
        key = c.post("/v1/keys", json={"scope": "predict", "name": "owner-serving"}).json()
        evaluation = c.post("/v1/evaluations", json={"model": chat["fine_tuned_model"],
                                                     "file": chat["training_file"]})
        assert evaluation.status_code == 200, evaluation.text
        c.post(f"/v1/evaluations/{evaluation.json()['id']}/cancel")  # no worker time spent on it
    return {"file_id": file_id, "job_id": chat["id"], "cancelled_job": job, "model_id": chat["fine_tuned_model"],
            "checkpoint": checkpoint, "endpoint_id": endpoint, "key_id": key["id"], "predict_key": key["value"],
            "evaluation_id": evaluation.json()["id"]}


def _calls(ids: dict[str, str]) -> dict[tuple[str, str], list[tuple[str, dict | None]]]:
    """(method, route template) → the concrete calls that route gets: (path, JSON body)."""
    f, j, m = ids["file_id"], ids["job_id"], ids["model_id"]
    return {
        ("GET", "/v1/files/{file_id}"): [(f"/v1/files/{f}", None)],
        ("DELETE", "/v1/files/{file_id}"): [(f"/v1/files/{f}", None)],
        ("GET", "/v1/files/{file_id}/content"): [(f"/v1/files/{f}/content", None)],
        ("GET", "/v1/files/{file_id}/preview"): [(f"/v1/files/{f}/preview", None)],
        ("GET", "/v1/fine_tuning/jobs/{job_id}"): [(f"{JOBS}/{j}", None)],
        ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): [(f"{JOBS}/{ids['cancelled_job']}/cancel", None)],
        ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): [(f"{JOBS}/{j}/pause", None)],
        ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): [(f"{JOBS}/{j}/resume", None)],
        ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): [(f"{JOBS}/{j}/events", None)],
        ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): [(f"{JOBS}/{j}/checkpoints", None)],
        ("GET", "/v1/fine_tuning/jobs/{job_id}/metrics"): [(f"{JOBS}/{j}/metrics", None)],
        ("GET", "/v1/models/{model_id}"): [(f"/v1/models/{m}", None)],
        ("DELETE", "/v1/models/{model_id}"): [(f"/v1/models/{m}", None)],
        ("GET", "/v1/models/{model_id}/download"): [(f"/v1/models/{m}/download", None),
                                                     (f"/v1/models/{ids['checkpoint']}/download", None)],
        ("POST", "/v1/models/{model_id}/predict"): [(f"/v1/models/{m}/predict", {"inputs": "the movie was"}),
                                                    (f"/v1/models/{ids['checkpoint']}/predict", {"inputs": "the"})],
        ("GET", "/v1/webhooks/{endpoint_id}"): [(f"/v1/webhooks/{ids['endpoint_id']}", None)],
        ("DELETE", "/v1/webhooks/{endpoint_id}"): [(f"/v1/webhooks/{ids['endpoint_id']}", None)],
        ("GET", "/v1/keys/{key_id}"): [(f"/v1/keys/{ids['key_id']}", None)],
        ("GET", "/v1/evaluations/{evaluation_id}"): [(f"/v1/evaluations/{ids['evaluation_id']}", None)],
        ("POST", "/v1/evaluations/{evaluation_id}/cancel"): [(f"/v1/evaluations/{ids['evaluation_id']}/cancel",
                                                              None)],
        ("GET", "/v1/evaluations/{evaluation_id}/events"): [(f"/v1/evaluations/{ids['evaluation_id']}/events",
                                                             None)],
        ("DELETE", "/v1/keys/{key_id}"): [(f"/v1/keys/{ids['key_id']}", None)],
    }


def _id_routes(stack) -> set[tuple[str, str]]:
    schema = httpx.get(f"{stack.url}/openapi.json").json()
    return {(method.upper(), path) for path, operations in schema["paths"].items() for method in operations
            if "{" in path}


def test_every_route_with_an_id_is_in_the_sweep(pg_stack, owned):
    assert _id_routes(pg_stack) == set(_calls(owned))


def test_another_project_gets_404_and_changes_nothing(pg_stack, owned, tenants):
    with pg_stack.client(tenants.b) as intruder:
        for route, calls in _calls(owned).items():
            for path, body in calls:
                response = intruder.request(route[0], path, json=body)
                assert response.status_code == 404, (route, path, response.status_code, response.text)
        # Ids in bodies and cursors: refused without a word about the other project's objects.
        assert intruder.post(JOBS, json={"model": "tiny/bert", "training_file": owned["file_id"]}).json()[
            "error"]["code"] == "file_not_found"
        assert intruder.post(f"{JOBS}/estimate", json={"model": "tiny/bert",
                                                       "training_file": owned["file_id"]}).status_code == 400
        chat = {"model": owned["model_id"], "messages": [{"role": "user", "content": "hi"}]}
        assert intruder.post("/v1/chat/completions", json=chat).status_code == 404
        assert intruder.post("/v1/completions", json={"model": owned["model_id"], "prompt": "hi"}).status_code == 404
        evaluation = {"model": owned["model_id"], "file": owned["file_id"]}
        assert intruder.post("/v1/evaluations", json=evaluation).status_code == 400
        for listing, cursor in (("/v1/files", "file_id"), (JOBS, "job_id"), ("/v1/webhooks", "endpoint_id"),
                                ("/v1/keys", "key_id"), ("/v1/evaluations", "evaluation_id")):
            assert intruder.get(listing, params={"after": owned[cursor]}).status_code == 404, listing
        assert owned["model_id"] not in intruder.get("/v1/models").text
    # Everything is still there for its owner.
    with pg_stack.client() as owner:
        for path in (f"/v1/files/{owned['file_id']}", f"{JOBS}/{owned['job_id']}", f"/v1/models/{owned['model_id']}",
                     f"/v1/webhooks/{owned['endpoint_id']}", f"/v1/keys/{owned['key_id']}",
                     f"/v1/evaluations/{owned['evaluation_id']}"):
            assert owner.get(path).status_code == 200, path
        assert owner.get(f"/v1/keys/{owned['key_id']}").json()["revoked_at"] is None


def test_a_predict_key_is_refused_beyond_its_scope(pg_stack, owned):
    with pg_stack.client(owned["predict_key"]) as serving:
        for route, calls in _calls(owned).items():
            for path, body in calls:
                if route[0] == "DELETE":  # refused by scope before anything is looked up or deleted
                    assert serving.delete(path).status_code == 403, path
                    continue
                response = serving.request(route[0], path, json=body)
                expected = {200} if route in PREDICT_SCOPE else {403}
                assert response.status_code in expected, (route, path, response.status_code, response.text)
                if response.status_code == 403:
                    assert response.json()["error"]["code"] == "insufficient_scope"
