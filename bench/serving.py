"""Serving throughput and latency against the model's own raw forward, measured in one run.

Starts the service (embedded default, in a scratch folder), fine-tunes the bundled MiniLM classifier
on examples/sentiment.csv (one epoch: accuracy does not matter here), then sweeps concurrent clients
(each sends one text per request, back to back) and prints predictions/s and p50/p99 latency next
to the raw forward of the same model on the same device: batched (the ceiling for throughput) and
single (the floor for latency).

    python -m bench.serving [--clients 1 8 32 64] [--seconds 10]

Goals (issue 5): throughput at 64 clients >= 0.7x raw batched; p50 at 1 client <= 1.5x raw single.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.service import MINILM_ID, minilm_folder, random_minilm, start_service

REPO = Path(__file__).resolve().parents[1]
with open(REPO / "examples" / "sentiment.csv", newline="") as _fh:
    SENTENCES = [row["text"] for row in csv.DictReader(_fh)]


def fine_tune(client: httpx.Client, base_model: str) -> str:
    with open(REPO / "examples" / "sentiment.csv", "rb") as fh:
        uploaded = client.post("/v1/files", files={"file": ("sentiment.csv", fh)}, data={"purpose": "fine-tune"})
    job = client.post("/v1/fine_tuning/jobs", json={
        "model": base_model, "training_file": uploaded.json()["id"],
        "hyperparameters": {"n_epochs": 1}}).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    return job


def raw_forward(model_dir: Path, batch: int, seconds: float) -> tuple[float, float]:
    """(p50 seconds of one text, texts/s in batches of ``batch``) with tokenization, as a server does."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.ml.artifacts import inference_device

    device, dtype = inference_device()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).to(device=device, dtype=dtype).eval()

    def run(texts):
        with torch.inference_mode():
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
            model(**encoded).logits.float().softmax(-1).cpu()

    singles = []
    for text in SENTENCES[:20]:
        run([text])  # warm-up
    for i in range(200):
        started = time.perf_counter()
        run([SENTENCES[i % len(SENTENCES)]])
        singles.append(time.perf_counter() - started)
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        texts = [SENTENCES[(i + j) % len(SENTENCES)] for j in range(batch)]
        run(texts)
        done, i = done + batch, i + batch
    return statistics.median(singles), done / (time.perf_counter() - started)


async def load(url: str, key: str, model: str, clients: int, seconds: float) -> tuple[float, float, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client_loop(offset: int):
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await c.post(f"/v1/models/{model}/predict", json={"inputs": SENTENCES[i % len(SENTENCES)]})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]


_seen = {"sum": 0.0, "count": 0.0}


def mean_batch(url: str) -> float:
    """Mean inputs per batched forward since the last call, from the service's /metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = {name: float(line.split()[-1]) for line in text.splitlines()
              for name in ("sum", "count") if line.startswith(f"finetune_predict_batch_inputs_{name} ")}
    delta = {k: values[k] - _seen[k] for k in values}
    _seen.update(values)
    return delta["sum"] / delta["count"] if delta.get("count") else 0.0


def load_with_wrk(url: str, key: str, model: str, clients: int, seconds: float) -> tuple[float, float, float]:
    """The same load from wrk (a C load generator): on a small machine a Python client would take
    CPU from the server it measures."""
    import json
    import re
    import urllib.parse

    bodies = ", ".join(json.dumps(json.dumps({"inputs": text})) for text in SENTENCES)
    script = Path(tempfile.mkdtemp()) / "predict.lua"
    script.write_text(f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local bodies = {{{bodies}}}
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i % #bodies) + 1])
end
""")
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}/predict"
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "--latency", "-s", str(script),
                          url + path], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(out)

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([0-9.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]

    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)), ms("50%"), ms("99%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    ns = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    port, key = 8700 + os.getpid() % 200, f"sk-bench-{uuid.uuid4().hex}"
    url = f"http://127.0.0.1:{port}"
    if minilm_folder()[1]:
        base_model, base_models_dir = MINILM_ID, None
    else:  # the pretrained weights are not here (a GPU machine): the same shape, random weights
        base_models_dir = root / "base_models"
        base_model = random_minilm(base_models_dir)
    process = start_service(root, port, key, base_models_dir=base_models_dir)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            job = fine_tune(c, base_model)
            model = job["fine_tuned_model"]
            c.post(f"/v1/models/{model}/predict", json={"inputs": SENTENCES[:8]}).raise_for_status()  # load it
        model_dir = next((root / "storage" / "models").glob(f"*/{job['id']}"))
        raw_single, raw_batched = raw_forward(model_dir, max(ns.clients), ns.seconds)
        from app.ml.artifacts import inference_device

        print(f"load generator: {'wrk' if shutil.which('wrk') else 'httpx (install wrk for a lighter client)'}; "
              f"model: {base_model} fine-tuned")
        print(f"device: {inference_device()[0]}; raw forward: single {raw_single * 1000:.1f} ms, "
              f"batched ({max(ns.clients)}) {raw_batched:.0f} texts/s")
        print(f"{'clients':>7} {'pred/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'thr/raw':>8} {'p50/raw1':>9} "
              f"{'avg batch':>10}")
        for clients in ns.clients:
            if shutil.which("wrk"):
                throughput, p50, p99 = load_with_wrk(url, key, model, clients, ns.seconds)
            else:
                throughput, p50, p99 = asyncio.run(load(url, key, model, clients, ns.seconds))
            print(f"{clients:>7} {throughput:>8.1f} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f} "
                  f"{throughput / raw_batched:>8.2f} {p50 / raw_single:>9.2f} {mean_batch(url) :>10.1f}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
