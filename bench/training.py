"""Training throughput: the same job three ways in one run, on the same rows and epochs.

1. **service**: uploaded and run through the API and a real worker (`finetune serve`), default
   settings (only epochs given, and evaluation/checkpoints pushed past the end so the loop is timed
   alone; the wall clock from submit to succeeded is printed too);
2. **bare defaults**: a plain `transformers.Trainer` script with default TrainingArguments;
3. **hand-tuned**: the bare script given, by hand, every setting the service chose (per-device batch,
   accumulation, length grouping, precision, tf32, fused optimizer, torch.compile, loader workers,
   packing) — the fastest bare Trainer we know how to write.

Printed per run: examples/s, non-pad tokens/s, MFU where a GPU exists (6 × parameters × tokens/s
against the measured bf16 matmul peak of this GPU), and the ratios service/bare and service/hand-tuned.

    python -m bench.training [--repeat 2]             # CPU: MiniLM on SST-2 (bench/datasets.py)
    python -m bench.training --shape bert-base gpt2   # GPU: random-init BERT-base and GPT-2 shapes
    python -m bench.training --shape gpt2 --layers 2 --rows 64 --seq 128   # a quick smoke run anywhere
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.datasets import dataset
from bench.service import MINILM_ID, minilm_folder, start_service

REPO = Path(__file__).resolve().parents[1]
SST2 = dataset("sst2")


def sst2_rows(split: str, limit: int) -> list[dict]:
    with open(SST2 / f"{split}.tsv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"text": r["sentence"], "label": int(r["label"])} for _, r in zip(range(limit), reader)]


def long_documents(count: int, chars: int, task: str) -> list[dict]:
    """Rows of about ``chars`` characters made of consecutive SST-2 sentences, so that every example
    fills max_seq_length: classification rows labelled by their first sentence, or prompt/completion."""
    sentences = sst2_rows("train", 200_000)
    rows, i = [], 0
    for _ in range(count):
        text, label = "", sentences[i % len(sentences)]["label"]
        while len(text) < chars:
            text += sentences[i % len(sentences)]["text"] + " . "
            i += 1
        rows.append({"text": text[:chars], "label": label} if task == "text-classification"
                    else {"prompt": text[:200], "completion": text[200:chars]})
    return rows


def build_shape(shape: str, root: Path, layers: int | None) -> tuple[str, Path]:
    """A random-init model of a standard shape with MiniLM's tokenizer, as a base-model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder()[0])
    path = root / "base_models" / "bench" / f"{shape}-shape"
    if shape == "bert-base":
        config = BertConfig(vocab_size=tokenizer.vocab_size, num_hidden_layers=layers or 12)
        model = BertModel(config)
    else:  # GPT-2 small: 12 layers, 768 wide, 1,024 positions
        config = GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=layers or 12, bos_token_id=tokenizer.cls_token_id,
                            eos_token_id=tokenizer.sep_token_id)
        model = GPT2LMHeadModel(config)
        tokenizer.eos_token = tokenizer.sep_token
        tokenizer.model_max_length = 1024
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return f"bench/{shape}-shape", path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_service(url: str, key: str, model: str, train: Path, valid: Path, hyperparameters: dict) -> dict:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
        ids = []
        for path in (train, valid):
            with open(path, "rb") as fh:
                uploaded = c.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
            uploaded.raise_for_status()
            ids.append(uploaded.json()["id"])
        started = time.monotonic()
        created = c.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": ids[0],
                                                        "validation_file": ids[1], "hyperparameters": hyperparameters})
        created.raise_for_status()
        job = created.json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            job = c.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        if job["status"] != "succeeded":
            raise RuntimeError(f"service job {job['status']}: {job.get('error')}")
        job["wall_seconds"] = time.monotonic() - started
        return job


def run_bare(model_path: Path, task: str, rows: list[dict], settings: dict) -> dict:
    """A bare Trainer on the same rows; ``settings`` are TrainingArguments (empty: the defaults)."""
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments)

    settings = dict(settings)
    packing, max_length = settings.pop("packing", False), settings.pop("max_length")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if task == "text-classification":
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        data = Dataset.from_list(rows).map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
                                           batched=True, remove_columns=["text"])
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path)
        model.config.use_cache = False

        def encode(batch):
            ids = [(tokenizer(p)["input_ids"] + tokenizer(c, add_special_tokens=False)["input_ids"]
                    + [tokenizer.sep_token_id])[:max_length] for p, c in zip(batch["prompt"], batch["completion"])]
            return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids], "labels": ids}
        data = Dataset.from_list(rows).map(encode, batched=True, remove_columns=["prompt", "completion"])
        if packing:
            from app.ml.packing import PackingCollator

            collator = PackingCollator(tokenizer.pad_token_id, max_length, 8 if torch.cuda.is_available() else None)
        else:
            collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    data = data.map(lambda b: {"length": [len(i) for i in b["input_ids"]]}, batched=True)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, report_to="none", save_strategy="no", disable_tqdm=True,
                                 logging_steps=50, **settings)
        trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          data_collator=collator)
        result = trainer.train()
    return {"seconds": float(result.metrics["train_runtime"]), "tokens": int(sum(data["length"])),
            "examples": len(data), "parameters": sum(p.numel() for p in model.parameters())}


def hand_tuned(hp: dict) -> dict:
    """The service's resolved hyperparameters, as TrainingArguments a person would write."""
    workers = int(hp["dataloader_workers"])
    return {"per_device_train_batch_size": hp["per_device_batch_size"],
            "gradient_accumulation_steps": hp["gradient_accumulation_steps"], "num_train_epochs": hp["n_epochs"],
            "learning_rate": hp["learning_rate"], "weight_decay": hp["weight_decay"],
            "warmup_steps": hp["warmup_ratio"], "lr_scheduler_type": hp["lr_scheduler"], "optim": hp["optimizer"],
            "bf16": hp["precision"] == "bf16", "fp16": hp["precision"] == "fp16", "tf32": hp["tf32"] or None,
            "torch_compile": hp["torch_compile"],
            "train_sampling_strategy": "group_by_length" if hp["group_by_length"] else "random",
            "dataloader_num_workers": workers, "dataloader_persistent_workers": workers > 0,
            "dataloader_pin_memory": workers > 0, "packing": hp.get("packing", False),
            "max_length": hp["max_seq_length"]}


def matmul_peak_tflops() -> float | None:
    """The bf16 matmul rate this GPU reaches (the MFU denominator), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    started, runs = time.perf_counter(), 20
    for _ in range(runs):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192**3 * runs / (time.perf_counter() - started) / 1e12


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--shape", nargs="+", default=["bert-base", "gpt2"] if gpu else ["minilm"],
                        choices=["minilm", "bert-base", "gpt2"])
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: per shape)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seq", type=int, default=None, help="max_seq_length (default: 128; GPT-2: 1024)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick smoke run")
    parser.add_argument("--batch", type=int, default=None, help="batch_size for the job (default: the service's)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three runs; each keeps its fastest")
    parser.add_argument("--no-bare-defaults", action="store_true",
                        help="leave out the bare-defaults run (slow in fp32 at a large --batch)")
    ns = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    (root / "base_models").mkdir()
    port, key = 8900 + os.getpid() % 90, f"sk-bench-{uuid.uuid4().hex}"
    peak = matmul_peak_tflops()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}" + (f"; measured bf16 matmul peak {peak:.0f} TFLOP/s" if peak else ""))
    jobs = []
    for shape in ns.shape:
        if shape == "minilm":
            model_path, pretrained = minilm_folder()
            if not pretrained:
                raise SystemExit("--shape minilm fine-tunes the pretrained MiniLM: `make install` provides it")
            model_id, task = MINILM_ID, "text-classification"
            rows, valid = sst2_rows("train", ns.rows or 4000), sst2_rows("validation", 200)
        else:
            # Standard shapes at full length, as in the MFU goals: BERT-base at 128 tokens, GPT-2 at 1,024.
            model_id, model_path = build_shape(shape, root, ns.layers)
            task = "text-classification" if shape == "bert-base" else "text-generation"
            chars = 6 * (ns.seq or (128 if shape == "bert-base" else 1024))
            count = ns.rows or ((10_000 if shape == "bert-base" else 1000) if gpu else 64)
            rows, valid = long_documents(count, chars, task), long_documents(16, chars, task)
        seq = ns.seq or (1024 if shape == "gpt2" else 128)
        jobs.append((shape, model_id, model_path, task, rows, valid, seq))

    process = start_service(root, port, key, base_models_dir=root / "base_models")
    results = []
    try:
        for shape, model_id, model_path, task, rows, valid, seq in jobs:
            train_path = write_jsonl(root / f"{shape}-train.jsonl", rows)
            valid_path = write_jsonl(root / f"{shape}-valid.jsonl", valid)
            requested = {"n_epochs": ns.epochs, "max_seq_length": seq, "eval_every": 10**7,
                         "checkpoint_every": 10**7, **({"batch_size": ns.batch} if ns.batch else {})}
            bare_settings = {"num_train_epochs": ns.epochs, "max_length": seq,
                             **({"per_device_train_batch_size": ns.batch} if ns.batch else {})}
            # Rounds alternate the three ways, so that a slow spell of the machine hits them alike;
            # each way keeps its fastest round.
            seconds: dict[str, list[float]] = {"service": [], "bare defaults": [], "hand-tuned": []}
            if ns.no_bare_defaults:
                del seconds["bare defaults"]
            for _ in range(ns.repeat):
                job = run_service(f"http://127.0.0.1:{port}", key, model_id, train_path, valid_path, requested)
                hp = job["hyperparameters"]
                seconds["service"].append(job["metrics"]["train_runtime"])
                if "bare defaults" in seconds:
                    seconds["bare defaults"].append(run_bare(model_path, task, rows, bare_settings)["seconds"])
                tuned = run_bare(model_path, task, rows, hand_tuned(hp))
                seconds["hand-tuned"].append(tuned["seconds"])
            # Examples, tokens and parameters are the same for every way; the hand-tuned run counted them.
            runs = {name: {**tuned, "seconds": min(times), "all": times} for name, times in seconds.items()}
            results.append((shape, job, hp, runs))
    finally:
        process.terminate()
        process.wait(timeout=60)

    for shape, job, hp, runs in results:
        print(f"\n{shape}: {runs['service']['examples']} examples × {ns.epochs} epoch(s), "
              f"{runs['service']['tokens']} non-pad tokens per epoch; service settings: per-device batch "
              f"{hp['per_device_batch_size']} × {hp['gradient_accumulation_steps']}, {hp['precision']}, tf32 "
              f"{hp['tf32']}, compile {hp['torch_compile']}, packing {hp.get('packing', '-')}; "
              f"service wall clock submit→succeeded {job['wall_seconds']:.0f} s")
        print(f"{'run':<14} {'seconds':>8} {'examples/s':>11} {'tokens/s':>10} {'MFU':>6}  rounds (s)")
        rate = {}
        for name, run in runs.items():
            rate[name] = run["examples"] * ns.epochs / run["seconds"]
            tokens = run["tokens"] * ns.epochs / run["seconds"]
            mfu = f"{100 * 6 * run['parameters'] * tokens / (peak * 1e12):.1f}%" if peak else "-"
            rounds = ", ".join(f"{t:.1f}" for t in run["all"])
            print(f"{name:<14} {run['seconds']:>8.1f} {rate[name]:>11.1f} {tokens:>10.0f} {mfu:>6}  {rounds}")
        print("   ".join(f"service / {way}: {rate['service'] / rate[way]:.2f}" for way in rate if way != "service"))


if __name__ == "__main__":
    main()
