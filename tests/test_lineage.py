"""Training on from where a job left off: `model` may be one of the project's fine-tuned models or
checkpoints. A LoRA model continues its adapter on the same base, a full model continues as a full
model, a classification head keeps its labels, and the job and model objects name their parent.
Through the API and a real worker."""

from __future__ import annotations

import csv
import io

from tests.conftest import EXAMPLES, upload
from tests.support import task_data as data

FAST = {"n_epochs": 4, "learning_rate": 2e-3, "batch_size": 16}
LORA = {"type": "lora", "r": 8}


def _train(stack, c, **body) -> dict:
    created = c.post("/v1/fine_tuning/jobs", json={"seed": 3, **body})
    assert created.status_code == 200, created.text
    done = stack.wait_for_job(created.json()["id"])
    assert done["status"] == "succeeded", (done.get("error"), stack.log()[-3000:])
    return done


def _csv(rows: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_lora_model_trains_on_with_its_adapter_and_its_labels(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        valid = upload(c, EXAMPLES / "sentiment_validation.csv").json()["id"]
        first = _train(pg_stack, c, model="tiny/bert", training_file=train, validation_file=valid,
                       hyperparameters=FAST, adapter=LORA)
        parent = first["fine_tuned_model"]

        second = _train(pg_stack, c, model=parent, training_file=train, validation_file=valid,
                        hyperparameters={**FAST, "n_epochs": 1})
        assert second["model"] == parent and second["base_model"] == "tiny/bert"
        assert second["hyperparameters"]["adapter"]["r"] == 8  # the parent's adapter, not a new one
        # It starts where the parent ended: its "before" is the parent's "after", not chance.
        assert second["evaluation"]["before"] == first["evaluation"]["after"]
        assert second["evaluation"]["note"] is None
        child = c.get(f"/v1/models/{second['fine_tuned_model']}").json()
        assert child["parent"] == parent and child["base_model"] == "tiny/bert"
        assert second["fine_tuned_model"].startswith("ft:tiny/bert:")
        answer = c.post(f"/v1/models/{second['fine_tuned_model']}/predict", json={"inputs": "A wonderful film."})
        assert answer.status_code == 200, answer.text

        # A label the head does not know is refused, naming its line (header = line 1).
        rows = [("A fine film.", "positive")] * 20 + [("Meh.", "neutral")] + [("Awful.", "negative")] * 20
        unknown = upload(c, "three.csv", _csv(rows)).json()["id"]
        refused = c.post("/v1/fine_tuning/jobs", json={"model": parent, "training_file": unknown})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "training_file" and "Line 22" in error["message"] and "'neutral'" in error["message"]

        # Another adapter, or another task, cannot be asked of it.
        other = c.post("/v1/fine_tuning/jobs", json={"model": parent, "training_file": train,
                                                      "adapter": {"type": "lora", "r": 4}})
        assert other.status_code == 400 and other.json()["error"]["param"] == "adapter", other.text
        chat = upload(c, "chat.jsonl", data.jsonl(data.chat(40))).json()["id"]
        wrong = c.post("/v1/fine_tuning/jobs", json={"model": parent, "training_file": chat})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "training_file", wrong.text


def test_a_full_checkpoint_trains_on_as_a_full_model(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        valid = upload(c, EXAMPLES / "sentiment_validation.csv").json()["id"]
        first = _train(pg_stack, c, model="tiny/bert", training_file=train, validation_file=valid,
                       hyperparameters={**FAST, "n_epochs": 6, "checkpoint_every": 24, "eval_every": 24})
        checkpoints = c.get(f"/v1/fine_tuning/jobs/{first['id']}/checkpoints").json()["data"]
        checkpoint = checkpoints[0]  # the newest (the last step, 72), by its OpenAI id (ftckpt-…)
        assert checkpoint["step_number"] == 72, checkpoints

        refused = c.post("/v1/fine_tuning/jobs", json={"model": checkpoint["id"], "training_file": train,
                                                        "adapter": LORA})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "adapter", refused.text

        # Trained on gently, as one goes on from a model that is already good.
        second = _train(pg_stack, c, model=checkpoint["id"], training_file=train, validation_file=valid,
                        hyperparameters={**FAST, "n_epochs": 2, "learning_rate": 2e-4})
        assert second["base_model"] == "tiny/bert" and second["hyperparameters"].get("adapter") is None
        child = c.get(f"/v1/models/{second['fine_tuned_model']}").json()
        assert child["parent"] == checkpoint["id"]
        # The checkpoint's weights, head included, exactly: it scores before training what it scored then.
        assert second["evaluation"]["before"] == checkpoint["metrics"]["eval_accuracy"]
        assert second["evaluation"]["note"] is None
        assert second["metrics"]["eval_accuracy"] >= second["evaluation"]["before"] - 0.05 >= 0.75


def test_sft_then_dpo_on_top(pg_stack):
    with pg_stack.client() as c:
        pairs = upload(c, "pairs.jsonl", data.jsonl(data.preference(80))).json()["id"]
        valid = upload(c, "valid.jsonl", data.jsonl(data.preference(24, seed=1))).json()["id"]
        sft = _train(pg_stack, c, model="tiny/gpt2", training_file=pairs, validation_file=valid,
                     chat_template=data.CHATML, adapter=LORA,
                     hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-3})
        # Supervised on preference pairs: it learns the preferred answers, and says by how much.
        assert sft["evaluation"]["metric"] == "eval_perplexity" and sft["evaluation"]["note"] is None
        assert sft["evaluation"]["after"] < sft["evaluation"]["before"]
        dpo = _train(pg_stack, c, model=sft["fine_tuned_model"], training_file=pairs, validation_file=valid,
                     method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 8,
                                                                         "learning_rate": 1e-3}}})
        assert dpo["method"]["type"] == "dpo" and dpo["base_model"] == "tiny/gpt2"
        # The reference is the SFT model (TRL keeps a frozen copy of the continued adapter): before the
        # first step the policy ties with it on every pair.
        assert dpo["evaluation"]["before"] == 0.5 and dpo["evaluation"]["after"] > 0.5
        model = c.get(f"/v1/models/{dpo['fine_tuned_model']}").json()
        assert model["parent"] == sft["fine_tuned_model"]
        answer = c.post("/v1/chat/completions", json={"model": dpo["fine_tuned_model"], "max_tokens": 3,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text


def test_another_projects_model_is_unknown(pg_stack):
    other_key = pg_stack.cli("keys", "create", "--project", "lineage-other", "--scope", "admin").strip()
    with pg_stack.client() as c, pg_stack.client(other_key) as other:
        jobs = c.get("/v1/fine_tuning/jobs", params={"limit": 50}).json()["data"]
        mine = next(j["fine_tuned_model"] for j in jobs if j["fine_tuned_model"])
        train = upload(other, EXAMPLES / "sentiment.csv").json()["id"]
        refused = other.post("/v1/fine_tuning/jobs", json={"model": mine, "training_file": train})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "model" and refused.json()["error"]["code"] == "model_not_found"
