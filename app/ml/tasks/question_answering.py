"""Extractive question answering in the SQuAD shape: ``question``, ``context`` and ``answers``
(``{"text": [...], "answer_start": [...]}``, character offsets into the context; empty lists for an
unanswerable question). Long contexts are cut into overlapping windows (a stride), each window
trained on the answer's token span when it holds it and on the [CLS] token when it does not; an
example's answer is the best span over all of its windows. Scored with SQuAD exact match and F1."""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import numpy as np

from app.ml.tasks.base import FieldProblem, Task, find_column, require_column, require_text

QUESTION_NAMES = ("question", "query", "q")
CONTEXT_NAMES = ("context", "passage", "paragraph", "document", "text")
ANSWER_NAMES = ("answers", "answer")
MAX_ANSWER_TOKENS = 30
# Bounds on the request's options: answers per question (enough to list every candidate, at most the 20
# likeliest starts × 20 likeliest ends per window), and an answer's length in tokens.
MAX_TOP_K = 1000
MAX_ANSWER_LEN = 512
# A long context becomes many windows; they go through the model this many at a time (memory stays
# bounded whatever the context's length, and others waiting for the model get turns in between).
WINDOWS_PER_FORWARD = 64


def _answers(value: Any) -> tuple[list[str], list[int]] | None:
    """A SQuAD answers value → (texts, starts), or None when it has another shape."""
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        return None
    texts, starts = value["text"], value["answer_start"]
    texts = texts if isinstance(texts, list) else [texts]
    starts = starts if isinstance(starts, list) else [starts]
    if len(texts) != len(starts) or not all(isinstance(t, str) for t in texts) or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in starts):
        return None
    return texts, starts


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _f1(prediction: str, truth: str) -> float:
    guess, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not guess or not gold:
        return float(guess == gold)
    common = sum((collections.Counter(guess) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(guess), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def window_answers(start_logits, end_logits, offsets, n_best: int = 1, max_tokens: int = MAX_ANSWER_TOKENS):
    """What one window says: its candidate answers, best first, as (probability, start char, end char),
    and the probability that it holds no answer (start and end on [CLS], token 0, where training puts
    unanswerable windows). Only tokens of the context (offsets not None) can start or end an answer;
    probabilities are over the context and [CLS], as transformers' pipeline computes them, so that a
    span and "no answer" can be compared."""
    context = np.array([o is not None and len(o) == 2 and o[0] >= 0 for o in offsets] +
                       [False] * (len(start_logits) - len(offsets)))
    if not context.any():
        return [], 1.0
    has_cls = not context[0]
    allowed = context.copy()
    allowed[0] = True

    def masked_softmax(logits):
        logits = np.where(allowed, np.asarray(logits, dtype=np.float64), -np.inf)
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()

    start_p, end_p = masked_softmax(start_logits), masked_softmax(end_logits)
    null = float(start_p[0] * end_p[0]) if has_cls else 0.0
    if has_cls:
        start_p[0] = end_p[0] = 0.0
    starts = np.argsort(start_p)[::-1][:20]
    ends = np.argsort(end_p)[::-1][:20]
    found = []
    for s in starts:
        for e in ends:
            if context[s] and context[e] and s <= e < s + max_tokens:
                found.append((float(start_p[s] * end_p[e]), int(offsets[s][0]), int(offsets[e][1])))
    return sorted(found, reverse=True)[:n_best], null


def _whole(parameters: dict[str, Any], name: str, default: int, high: int) -> int:
    value = parameters.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise FieldProblem(f"parameters.{name}",
                           f"{name} must be a whole number from 1 to {high}, not {str(value)[:40]!r}.")
    return value


def no_answer_wins(spans: list[tuple[float, int, int]], null: float) -> bool:
    """SQuAD 2.0's rule: "no answer" when no window's best span beats the least confident
    "no answer" of all windows (the window most sure the answer is somewhere in it)."""
    return not spans or null > max(spans)[0]


class QuestionAnswering(Task):
    name = "question-answering"
    roles = {"question": True, "context": True, "answers": True}
    nests_single_output = False
    auto_model = "AutoModelForQuestionAnswering"
    headline_metric = "eval_f1"
    peft_task_type = "QUESTION_ANS"
    length_roles = ("question", "context")
    max_seq_length_cap = 384
    label_names = ("start_positions", "end_positions")

    def guess_mapping(self, profile):
        mapping = {}
        for role, names in (("question", QUESTION_NAMES), ("context", CONTEXT_NAMES), ("answers", ANSWER_NAMES)):
            column = find_column(profile, names)
            if column and column not in mapping.values():
                mapping[role] = column
        return mapping

    def detect(self, profile):
        mapping = self.guess_mapping(profile)
        if len(mapping) == 3 and set((profile[mapping["answers"]].get("kinds") or {})) == {"dict"}:
            return mapping
        return None

    def _check_columns(self, mapping, profile, file_param):
        for role in self.roles:
            if not mapping.get(role):
                raise FieldProblem(f"column_mapping.{role}", f"column_mapping.{role} is required: name the column "
                                                             f"holding each row's {role}.")
        require_text(profile, mapping["question"], "column_mapping.question", file_param)
        require_text(profile, mapping["context"], "column_mapping.context", file_param)
        stats = require_column(profile, mapping["answers"], "column_mapping.answers", file_param)
        other = {k: line for k, line in (stats.get("kind_lines") or {}).items() if k != "dict"}
        if other or stats["nulls"]:
            line = min([*other.values(), *stats["null_lines"][:1]])
            raise FieldProblem("column_mapping.answers", f"Column '{mapping['answers']}' of {file_param} must hold "
                                                         f"{{\"text\": [...], \"answer_start\": [...]}} on every row "
                                                         f"(line {line} does not).")

    def plan(self, mapping, train, valid):
        self._check_columns(mapping, train, "training_file")
        if valid is not None:
            self._check_columns(mapping, valid, "validation_file")
        return {}

    def check_base_model(self, path, model_type, plan):
        super().check_base_model(path, model_type, plan)
        if not (path / "tokenizer.json").exists():
            raise FieldProblem("model", "Question answering needs a fast tokenizer (tokenizer.json) to map "
                                        "answers to characters; this base model has none.")

    def check_rows(self, records, mapping, file_param):
        for line, record in records:
            context, parsed = record.get(mapping["context"]), _answers(record.get(mapping["answers"]))
            if parsed is None:
                raise FieldProblem("column_mapping.answers", f"Line {line} of {file_param}: answers must be "
                                   "{\"text\": [strings], \"answer_start\": [integers]} of equal length.")
            for text, start in zip(*parsed):
                if not isinstance(context, str) or context[start:start + len(text)] != text:
                    found = context[start:start + len(text)] if isinstance(context, str) else None
                    raise FieldProblem("column_mapping.answers",
                                       f"Line {line} of {file_param}: answer {text!r} is not at answer_start {start} "
                                       f"of the context (found {found!r}). answer_start counts characters from 0.")

    def row(self, record, mapping, plan):
        texts, starts = _answers(record[mapping["answers"]])
        return {"question": str(record[mapping["question"]]).strip(), "context": str(record[mapping["context"]]),
                "answer_texts": texts, "answer_starts": starts}

    def tokenize(self, batch, tokenizer, plan, max_length):
        encoded = tokenizer(batch["question"], batch["context"], truncation="only_second", max_length=max_length,
                            stride=max_length // 4, return_overflowing_tokens=True, return_offsets_mapping=True)
        samples = encoded.pop("overflow_to_sample_mapping")
        columns = collections.defaultdict(list)
        for i, offsets in enumerate(encoded["offset_mapping"]):
            sample = samples[i]
            sequence = encoded.sequence_ids(i)
            in_context = [s == 1 for s in sequence]
            first, last = in_context.index(True), len(in_context) - 1 - in_context[::-1].index(True)
            start_token = end_token = 0  # [CLS]: "the answer is not in this window"
            if batch["answer_texts"][sample]:
                char_start = batch["answer_starts"][sample][0]
                char_end = char_start + len(batch["answer_texts"][sample][0])
                if offsets[first][0] <= char_start and offsets[last][1] >= char_end:
                    start_token = first
                    while start_token <= last and offsets[start_token][0] <= char_start:
                        start_token += 1
                    start_token -= 1
                    end_token = last
                    while end_token >= first and offsets[end_token][1] >= char_end:
                        end_token -= 1
                    end_token += 1
            columns["start_positions"].append(start_token)
            columns["end_positions"].append(end_token)
            # Evaluation maps windows back to examples and token spans back to characters.
            columns["offsets"].append([list(o) if c else [-1, -1] for o, c in zip(offsets, in_context)])
            columns["example_id"].append(batch["row_id"][sample])
            columns["context"].append(batch["context"][sample])
            columns["answer_texts"].append(batch["answer_texts"][sample])
        del encoded["offset_mapping"]
        return {**encoded, **columns}

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        start_logits, end_logits = predictions
        spans: dict[int, list[tuple[float, int, int]]] = collections.defaultdict(list)
        nulls: dict[int, float] = {}
        truths: dict[int, list[str]] = {}
        contexts: dict[int, str] = {}
        for i in range(len(features)):
            feature = features[i]
            example = feature["example_id"]
            truths[example], contexts[example] = feature["answer_texts"], feature["context"]
            found, null = window_answers(start_logits[i], end_logits[i], feature["offsets"])
            spans[example] += found
            nulls[example] = min(null, nulls.get(example, 1.0))
        # Data with unanswerable questions (SQuAD 2.0) is scored the SQuAD 2.0 way: "no answer" can be
        # the prediction; otherwise the best span always is, as SQuAD 1.1 scores it.
        impossible = any(not answers for answers in truths.values())
        exact, f1 = [], []
        for example, answers in truths.items():
            found = spans[example]
            if (impossible and no_answer_wins(found, nulls[example])) or not found:
                guess = ""
            else:
                _, start, end = max(found)
                guess = contexts[example][start:end]
            answers = answers or [""]
            exact.append(max(float(normalize_answer(guess) == normalize_answer(a)) for a in answers))
            f1.append(max(_f1(guess, a) for a in answers))
        return {"exact_match": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}

    def predict(self, served, inputs, parameters):
        import torch

        questions, contexts = [], []
        for item in inputs:
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or \
                    not isinstance(item.get("context"), str):
                raise FieldProblem("inputs", "Each input must be an object {\"question\": text, \"context\": text}.")
            questions.append(item["question"].strip())
            contexts.append(item["context"])
        top_k = _whole(parameters, "top_k", 1, MAX_TOP_K)
        max_tokens = _whole(parameters, "max_answer_len", MAX_ANSWER_TOKENS, MAX_ANSWER_LEN)
        # transformers' pipeline option: let "no answer" ({"answer": ""}) compete with the spans, for
        # models trained on unanswerable questions.
        impossible = parameters.get("handle_impossible_answer", False)
        if not isinstance(impossible, bool):
            raise FieldProblem("parameters.handle_impossible_answer", "handle_impossible_answer must be true or false.")
        model, tokenizer, max_length = served.model, served.tokenizer, served.max_length
        encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length,
                            stride=max_length // 4, return_overflowing_tokens=True, return_offsets_mapping=True,
                            padding=True, return_tensors="pt")
        samples = encoded.pop("overflow_to_sample_mapping").tolist()
        offsets = encoded.pop("offset_mapping").tolist()
        start_logits, end_logits = [], []
        with torch.inference_mode():
            for first in range(0, len(samples), WINDOWS_PER_FORWARD):
                if first:
                    served.let_others_run()
                rows = slice(first, first + WINDOWS_PER_FORWARD)
                output = model(**{k: v[rows].to(model.device) for k, v in encoded.items()})
                start_logits.append(output.start_logits.float().cpu())
                end_logits.append(output.end_logits.float().cpu())
        starts, ends = torch.cat(start_logits).numpy(), torch.cat(end_logits).numpy()
        candidates: list[list[tuple[float, int, int]]] = [[] for _ in inputs]
        nulls = [1.0] * len(inputs)
        for i, sample in enumerate(samples):
            window = [o if s == 1 else None for o, s in zip(offsets[i], encoded.sequence_ids(i))]
            found, null = window_answers(starts[i], ends[i], window, top_k, max_tokens)
            candidates[sample] += found
            nulls[sample] = min(nulls[sample], null)
        outputs = []
        for context, found, null in zip(contexts, candidates, nulls):
            if impossible:
                found = [*found, (null, 0, 0)]
            elif not found:  # no span in any window: an empty answer, as the pipeline gives
                found = [(0.0, 0, 0)]
            answers = [{"answer": context[s:e], "score": p, "start": s, "end": e}
                       for p, s, e in sorted(found, key=lambda c: c[0], reverse=True)[:top_k]]
            outputs.append(answers[0] if top_k == 1 else answers)
        return outputs
