"""One fine-tuned model per task and variant, trained once per test session by a real worker on the
PostgreSQL/Redis stack and shared by the task, protocol and serving tests."""

from __future__ import annotations

from tests.support import task_data as data

# task → (dataset builder, base model, predict input)
CASES = {
    "question-answering": (data.question_answering, "tiny/bert", {
        "question": "what did alice love ?", "context": "alice loved the movie . bob hated the plot ."}),
    "summarization": (data.summarization, "tiny/t5", "alice and bob movie story plot great"),
    "text-generation": (data.prompt_completion, "tiny/gpt2", "the movie was great =>"),
    "multi-label-classification": (data.multi_label, "tiny/bert", "the team won and new phone released"),
}
FAST = {"n_epochs": 8, "batch_size": 8}


def _upload(client, name: str, rows: list[dict]) -> str:
    response = client.post("/v1/files", files={"file": (name, data.jsonl(rows))}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def train_task_models(stack) -> dict[tuple[str, str], dict]:
    """Every task full and LoRA, a merged adapter, a chat model, and classifiers (two adapters sharing a
    base): submitted at once, then waited for. Returns the finished jobs by (task, variant)."""
    lr = {"full": 1e-3, "lora": 3e-3}
    with stack.client() as c:
        requests: dict[tuple[str, str], dict] = {}
        files: dict[str, str] = {}
        for task, (builder, model, _) in CASES.items():
            files[task] = _upload(c, f"{task}.jsonl", builder(300))
            valid = _upload(c, f"{task}-valid.jsonl", builder(40, seed=1))
            for variant in ("full", "lora"):
                requests[(task, variant)] = {
                    "model": model, "training_file": files[task], "validation_file": valid, "seed": 1,
                    "suffix": variant, "hyperparameters": {**FAST, "learning_rate": lr[variant]},
                    **({"adapter": {"type": "lora", "r": 8}} if variant == "lora" else {})}
        requests[("chat", "full")] = {
            "model": "tiny/gpt2", "training_file": _upload(c, "chat.jsonl", data.chat(300)),
            "chat_template": data.CHATML, "hyperparameters": {**FAST, "learning_rate": lr["full"]}}
        requests[("question-answering", "merged")] = {
            "model": "tiny/bert", "training_file": files["question-answering"],
            "hyperparameters": {**FAST, "learning_rate": lr["lora"]},
            "adapter": {"type": "lora", "r": 8, "merge": True}}
        sentiment = _upload(c, "sentiment.jsonl", data.sentiment(300))
        for variant, seed in (("full", 1), ("lora", 1), ("lora-2", 2)):
            requests[("text-classification", variant)] = {
                "model": "tiny/bert", "training_file": sentiment, "seed": seed,
                "hyperparameters": {**FAST, "learning_rate": lr[variant[:4]]},
                **({"adapter": {"type": "lora", "r": 8}} if variant != "full" else {})}
        ner = _upload(c, "ner.jsonl", data.ner(300))
        scores = _upload(c, "scores.jsonl", data.scores(300))
        for variant in ("full", "lora"):
            adapter = {"adapter": {"type": "lora", "r": 8}} if variant == "lora" else {}
            requests[("token-classification", variant)] = {
                "model": "tiny/bert", "training_file": ner,
                "hyperparameters": {**FAST, "learning_rate": lr[variant]}, **adapter}
            requests[("text-regression", variant)] = {  # whole-number scores would read as classes
                "model": "tiny/bert", "training_file": scores, "task": "text-regression",
                "hyperparameters": {**FAST, "learning_rate": lr[variant]}, **adapter}
        jobs = {}
        for key, body in requests.items():
            response = c.post("/v1/fine_tuning/jobs", json=body)
            assert response.status_code == 200, (key, response.text)
            jobs[key] = response.json()
        done = {key: stack.wait_for_job(job["id"], timeout=900) for key, job in jobs.items()}
    for key, job in done.items():
        assert job["status"] == "succeeded", (key, job, stack.log()[-3000:])
    return done
