"""What the hand-written baselines share (bench/bare_trainer.py, bare_trainer_ner.py, bare_trl.py): reading
rows, a fixed held-out split, the seed, timing their phases, the command line, and the chat scores the
realism tests compare a service's model with (perplexity on answers).

Kept free of the service's code: a baseline is what a user would write with the libraries alone."""

from __future__ import annotations

import argparse
import json
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

SEED = 42  # TrainingArguments' default, and the seed the realism tests give the service's jobs


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` JSON objects of a JSON-lines file (blank lines skipped)."""
    rows: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def split_rows(rows: list, eval_rows: int, train_rows: int, seed: int = 0) -> tuple[list, list]:
    """(train, held-out) from a file that has no validation split: one seeded shuffle, the first
    ``eval_rows`` held out, the next ``train_rows`` for training. The same on every machine and run."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if eval_rows + train_rows > len(order):
        raise ValueError(f"asked for {eval_rows} + {train_rows} rows of {len(order)}")
    held_out = [rows[i] for i in order[:eval_rows]]
    train = [rows[i] for i in order[eval_rows:eval_rows + train_rows]]
    return train, held_out


def seeded(seed: int = SEED) -> None:
    """Python, NumPy and torch seeded before the model is built, so a new head (or adapter) starts the
    same in every run; the Trainer seeds again itself, only later."""
    from transformers import set_seed

    set_seed(seed)


class Stopwatch:
    """Wall time of a baseline's phases (load, tokenize, train…), each from a ``with clock.lap(name)``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def lap(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def report(self) -> dict[str, float]:
        """``<phase>_seconds`` for each phase, and ``wall_seconds``: all of them together."""
        out = {f"{name}_seconds": round(value, 3) for name, value in self.seconds.items()}
        out["wall_seconds"] = round(sum(self.seconds.values()), 3)
        return out


def baseline_main(doc: str, run: Callable[..., dict], read_rows: Callable[[Path, int | None], list], eval_rows: int,
                  options: Callable[[argparse.ArgumentParser], None] | None = None, split: bool = False) -> None:
    """The command line of a baseline: model, train/eval files, row counts (and the script's own
    ``options``, passed to ``run`` by name) → its result as JSON. With ``split``, ``--eval`` may be left
    out: the held-out rows then come from the training file (split_rows)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=not split)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=eval_rows)
    if options:
        options(parser)
    ns = vars(parser.parse_args())
    model, train, evaluate = ns.pop("model"), ns.pop("train"), ns.pop("eval")
    train_rows, held_out_rows = ns.pop("train_rows"), ns.pop("eval_rows")
    if evaluate is None:
        rows, held_out = split_rows(read_rows(train, None), held_out_rows, train_rows)
    else:
        rows, held_out = read_rows(train, train_rows), read_rows(evaluate, held_out_rows)
    print(json.dumps(run(model, rows, held_out, **ns), indent=2))


# --- chat scores ---------------------------------------------------------------------------------

def answer_ids(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """A conversation ending with the assistant's answer → (token ids, labels): the answer's tokens
    (its end-of-turn marker included) are labelled, the conversation before it is not (-100). The
    answer is what the chat template's rendering of the whole adds after the prompt's rendering with
    its generation prompt, as TRL and the service both take it."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently once the answer follows")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_length]
    labels = [t if start >= len(prompt) else -100 for t, (start, _) in zip(ids, encoded["offset_mapping"])]
    return ids, labels


def answer_perplexity(model, tokenizer, conversations: list[list[dict]], max_length: int,
                      batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per answer token) of ``model`` over the conversations' last
    (assistant) messages: every token weighs the same, whatever batch it falls in."""
    import math

    import torch

    encoded = sorted((answer_ids(tokenizer, c, max_length) for c in conversations), key=lambda e: len(e[0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = encoded[start:start + batch_size]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
                labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
                mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = labels[:, 1:]
                losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                           ignore_index=-100, reduction="sum")
                total += float(losses)
                count += int((target != -100).sum())
    finally:
        model.train(was_training)
    return math.exp(total / max(1, count))


def preferred_conversation(pair: dict[str, Any]) -> list[dict]:
    """An OpenAI preference pair as a chat: its input messages, then the preferred answer."""
    return [*pair["input"]["messages"], *pair["preferred_output"]]
