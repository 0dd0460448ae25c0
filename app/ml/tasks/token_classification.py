"""Token classification (named entities, BIO/IOB2 tags): a list of words and one tag per word.

Tags are aligned to the first sub-token of each word (the others are ignored by the loss), scored at
entity level with seqeval, and served as entity groups with character offsets, as the Hugging Face
token-classification pipeline returns them (aggregation "simple")."""

from __future__ import annotations

from typing import Any

from app.data.scan import value_key
from app.ml.tasks.base import FieldProblem, Task, find_column, labels_config, require_column, require_no_missing

TOKEN_NAMES = ("tokens", "words", "token")
TAG_NAMES = ("ner_tags", "tags", "labels", "label", "ner", "pos_tags")
IGNORE = -100


def _list_of(stats: dict[str, Any], kind: str) -> bool:
    kinds = stats.get("kinds") or {}
    items = stats.get("item_kinds") or {}
    return set(kinds) == {"list"} and bool(items) and set(items) <= ({kind} if kind == "str" else {"str", "int"})


def _sorted_tags(tags: list[str]) -> list[str]:
    # "O" first, then entity types grouped (B-X before I-X), so label ids are stable and readable.
    def key(tag: str):
        prefix, _, kind = tag.partition("-")
        return (tag != "O", kind or prefix, prefix)

    try:
        return [str(t) for t in sorted(int(t) for t in tags)]
    except ValueError:
        return sorted(tags, key=key)


class TokenClassification(Task):
    name = "token-classification"
    roles = {"tokens": True, "tags": True}
    nests_single_output = False
    auto_model = "AutoModelForTokenClassification"
    headline_metric = "eval_f1"
    peft_task_type = "TOKEN_CLS"
    length_roles = ("tokens",)

    def guess_mapping(self, profile):
        mapping = {}
        tokens = find_column(profile, TOKEN_NAMES)
        tags = find_column(profile, TAG_NAMES)
        if tokens:
            mapping["tokens"] = tokens
        if tags and tags != tokens:
            mapping["tags"] = tags
        return mapping

    def detect(self, profile):
        mapping = self.guess_mapping(profile)
        if len(mapping) == 2 and _list_of(profile[mapping["tokens"]], "str") and \
                _list_of(profile[mapping["tags"]], "tag"):
            return mapping
        return None

    def _check_columns(self, mapping, profile, file_param):
        for role, kind in (("tokens", "str"), ("tags", "tag")):
            if not mapping.get(role):
                raise FieldProblem(f"column_mapping.{role}", f"column_mapping.{role} is required: name the column "
                                                             f"holding the list of {role} of each row.")
            stats = require_column(profile, mapping[role], f"column_mapping.{role}", file_param)
            require_no_missing(stats, mapping[role], f"column_mapping.{role}", file_param)
            if not _list_of(stats, kind):
                what = "words (strings)" if kind == "str" else "tags (strings or integers)"
                line = min((v for k, v in (stats.get("kind_lines") or {}).items() if k != "list"), default=None)
                where = f" (line {line})" if line else ""
                raise FieldProblem(f"column_mapping.{role}", f"Column '{mapping[role]}' of {file_param} must hold a "
                                                             f"list of {what} on every row{where}.")

    def plan(self, mapping, train, valid):
        self._check_columns(mapping, train, "training_file")
        distinct = train[mapping["tags"]].get("item_distinct")
        if distinct is None:
            raise FieldProblem("column_mapping.tags", "More than 1000 distinct tags: is it the right column?")
        tags = _sorted_tags(list(distinct))
        if len(tags) < 2:
            raise FieldProblem("column_mapping.tags", f"Every word has the same tag ({tags[0]!r}); there is nothing "
                                                      "to learn.")
        if valid is not None:
            self._check_columns(mapping, valid, "validation_file")
            unknown = sorted(set(valid[mapping["tags"]].get("item_distinct") or {}) - set(tags))
            if unknown:
                raise FieldProblem("validation_file", f"validation_file has tags the training file lacks: "
                                                      f"{', '.join(unknown[:10])}.")
        return {"labels": tags}

    def check_rows(self, records, mapping, file_param):
        for line, record in records:
            words, tags = record.get(mapping["tokens"]), record.get(mapping["tags"])
            if isinstance(words, list) and isinstance(tags, list) and len(words) != len(tags):
                raise FieldProblem("column_mapping.tags", f"Line {line} of {file_param} has {len(words)} words but "
                                                           f"{len(tags)} tags; give exactly one tag per word.")

    def row(self, record, mapping, plan):
        index = {tag: i for i, tag in enumerate(plan["labels"])}
        return {"tokens": [str(w) for w in record[mapping["tokens"]]],
                "labels": [index[value_key(t)] for t in record[mapping["tags"]]]}

    def tokenize(self, batch, tokenizer, plan, max_length):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        aligned = []
        for i, tags in enumerate(batch["labels"]):
            previous, row = None, []
            for word in encoded.word_ids(i):
                # Only a word's first sub-token carries its tag; special tokens and continuations are ignored.
                row.append(IGNORE if word is None or word == previous else tags[word])
                previous = word
            aligned.append(row)
        encoded["labels"] = aligned
        return encoded

    def collator(self, tokenizer, model, pad_to_multiple_of, packing_length=None):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def model_kwargs(self, plan):
        return labels_config(plan["labels"])

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        import numpy as np
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        names = plan["labels"]
        predicted = np.asarray(predictions).argmax(-1)
        truth, guess = [], []
        for p_row, l_row in zip(predicted, labels):
            keep = [(names[p], names[t]) for p, t in zip(p_row, l_row) if t != IGNORE]
            guess.append([p for p, _ in keep])
            truth.append([t for _, t in keep])
        return {"precision": float(precision_score(truth, guess, zero_division=0)),
                "recall": float(recall_score(truth, guess, zero_division=0)),
                "f1": float(f1_score(truth, guess, zero_division=0)), "accuracy": float(accuracy_score(truth, guess))}

    def predict(self, served, inputs, parameters):
        import torch

        texts = []
        for item in inputs:
            if not isinstance(item, str):
                raise FieldProblem("inputs", "Each input must be a text string.")
            texts.append(item)
        model, tokenizer = served.model, served.tokenizer
        encoded = tokenizer(texts, truncation=True, max_length=served.max_length, padding=True,
                            return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping").tolist()
        with torch.inference_mode():
            probabilities = model(**{k: v.to(model.device) for k, v in encoded.items()}).logits.float().softmax(-1).cpu()
        return [self._entities(text, probabilities[i], offsets[i], encoded.word_ids(i), served.plan["labels"])
                for i, text in enumerate(texts)]

    @staticmethod
    def _entities(text, probabilities, offsets, word_ids, id2label) -> list[dict[str, Any]]:
        """Word-level tags (first sub-token decides, as in training), then BIO spans merged into groups."""
        words: list[tuple[str, float, int, int]] = []  # (tag, score, start, end) per word
        previous = None
        for position, word in enumerate(word_ids):
            if word is None:
                continue
            start, end = offsets[position]
            if word != previous:
                score, index = probabilities[position].max(-1)
                words.append((id2label[int(index)], float(score), start, end))
            else:  # a continuation sub-token extends the word's span
                tag, score, first, _ = words[-1]
                words[-1] = (tag, score, first, end)
            previous = word
        groups: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for tag, score, start, end in words:
            prefix, _, kind = tag.partition("-") if "-" in tag else ("", "", tag)
            if tag == "O" or (not kind):
                current = None
                continue
            if current is not None and current["entity_group"] == kind and prefix != "B":
                current["end"], current["scores"] = end, current["scores"] + [score]
            else:
                current = {"entity_group": kind, "start": start, "end": end, "scores": [score]}
                groups.append(current)
        return [{"entity_group": g["entity_group"], "score": sum(g["scores"]) / len(g["scores"]),
                 "word": text[g["start"]:g["end"]], "start": g["start"], "end": g["end"]} for g in groups]
