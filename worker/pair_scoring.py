"""Preference pairs scored as DPO scores them: each answer's log-probability (its tokens only) under
the model and under a reference, the implicit reward β·(log p_model − log p_reference), and whether the
preferred answer's reward is the higher (ties count half, as the DPO "before" does). Part of the pure
evaluation core (worker/evaluation.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from app.ml.adapters import ADAPTER_CONFIG
from worker.evaluation import EvaluationSpec, ModelFiles, clip, load_model, row_records


def score_pairs(spec: EvaluationSpec, task, tokenizer, model, rows, features, progress,
                 out: TextIO) -> dict[str, float]:
    """DPO's evaluation metrics over every pair, and each pair's rewards in the result file."""
    import torch.nn.functional as F

    from worker.dpo import preference_collator

    reference, through_base = _reference_model(spec, task, model)
    collator = preference_collator(tokenizer, spec.max_seq_length, None)
    totals = dict.fromkeys(("eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_reward_chosen",
                            "eval_reward_rejected", "eval_logp_chosen", "eval_logp_rejected"), 0.0)
    for start in range(0, len(features), spec.batch_size):
        end = min(start + spec.batch_size, len(features))
        batch = collator([features[i] for i in range(start, end)])
        policy_chosen, policy_rejected = _sequence_logps(model, batch)
        if through_base:  # the model's own base, under its LoRA adapter: no second copy of the weights
            with model.disable_adapter():
                reference_chosen, reference_rejected = _sequence_logps(model, batch)
        else:
            reference_chosen, reference_rejected = _sequence_logps(reference, batch)
        chosen = spec.beta * (policy_chosen - reference_chosen)
        rejected = spec.beta * (policy_rejected - reference_rejected)
        margin = chosen - rejected
        for name, values in (("eval_loss", -F.logsigmoid(margin)), ("eval_reward_margin", margin),
                             ("eval_reward_accuracy", (margin > 0).double() + 0.5 * (margin == 0).double()),
                             ("eval_reward_chosen", chosen), ("eval_reward_rejected", rejected),
                             ("eval_logp_chosen", policy_chosen), ("eval_logp_rejected", policy_rejected)):
            totals[name] += float(values.sum())
        for record, good, bad in zip(row_records(rows[start:end]), chosen.tolist(), rejected.tolist()):
            prompt = record["messages"] if record.get("messages") is not None else record["prompt"]
            prefers = "preferred_output" if good > bad else "non_preferred_output" if bad > good else "tie"
            out.write(json.dumps({"line": record["line"], "input": clip(prompt), "prediction": prefers,
                                  "reference": "preferred_output", "reward_chosen": good, "reward_rejected": bad,
                                  "preferred_output": clip(record["completion"]),
                                  "non_preferred_output": clip(record["rejected"])}) + "\n")
        progress.advance(rows=end - start)
    return {name: total / len(features) for name, total in totals.items()}


def _reference_model(spec: EvaluationSpec, task, model):
    """(the reference model, whether it is the model's base reached by switching its adapter off)."""
    reference = spec.reference
    if reference is None or reference == spec.model:
        return model, False  # the model against itself: every pair ties
    adapter = spec.model.weights_path is not None and (Path(spec.model.weights_path) / ADAPTER_CONFIG).exists()
    if adapter and reference == ModelFiles(spec.model.base_path):
        return None, True
    return load_model(task, reference, spec.plan), False


def _sequence_logps(model, batch):
    """Each sequence's log-probability of its answer tokens (prompt and padding left out): the pairs'
    preferred sequences first, then the non-preferred, as the pair collator lays them out."""
    import torch

    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    answer = batch["completion_mask"][:, 1:].to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        sums = (token_logps * answer).sum(-1).double().cpu()
    half = ids.shape[0] // 2
    return sums[:half], sums[half:]
