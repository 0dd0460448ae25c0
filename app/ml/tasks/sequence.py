"""What text classification and text regression share: one text (or a pair) in, one vector out of
``AutoModelForSequenceClassification``. The two tasks differ only in labels, metrics and outputs."""

from __future__ import annotations

from typing import Any

from app.ml.tasks.base import (
    LABEL_NAMES, PAIR_NAMES, TEXT_NAMES, FieldProblem, Task, find_column, require_column, require_no_missing,
    require_text,
)


class SequenceTask(Task):
    roles = {"text": True, "text_pair": False, "label": True}

    def detect_text_columns(self, profile: dict[str, Any]) -> dict[str, str] | None:
        text = find_column(profile, TEXT_NAMES, kind="str")
        if text is None:
            # A file with exactly one text column and a label column still has an obvious reading.
            texts = [c for c, s in profile.items() if (s.get("kinds") or {}).get("str") and c.lower() not in LABEL_NAMES]
            text = texts[0] if len(texts) == 1 else None
        if text is None:
            return None
        mapping = {"text": text}
        pair = find_column(profile, PAIR_NAMES, kind="str")
        if pair and pair != text:
            mapping["text_pair"] = pair
        return mapping

    def guess_mapping(self, profile):
        mapping = self.detect_text_columns(profile) or {}
        label = find_column(profile, LABEL_NAMES)
        return {**mapping, "label": label} if label else mapping

    def detect(self, profile):
        mapping = self.guess_mapping(profile)
        if "text" in mapping and "label" in mapping and self.label_fits(profile[mapping["label"]]):
            return mapping
        return None

    def label_fits(self, stats: dict[str, Any]) -> bool:
        """Whether a label column with these statistics is this task's kind of target."""
        raise NotImplementedError

    def check_inputs(self, mapping: dict[str, str], profile: dict[str, Any], file_param: str) -> None:
        require_text(profile, mapping["text"], "column_mapping.text", file_param)
        if mapping.get("text_pair"):
            require_text(profile, mapping["text_pair"], "column_mapping.text_pair", file_param)
        require_column(profile, mapping["label"], "column_mapping.label", file_param)

    def row_inputs(self, record: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
        pair = mapping.get("text_pair")
        return {"text": str(record[mapping["text"]]), "text_pair": str(record[pair]) if pair else None}

    def tokenize(self, batch, tokenizer, plan, max_length):
        pairs = batch["text_pair"] if any(p is not None for p in batch["text_pair"]) else None
        encoded = tokenizer(batch["text"], pairs, truncation=True, max_length=max_length)
        encoded["labels"] = batch["labels"]
        return encoded

    def forward(self, served, inputs: list[Any], parameters: dict[str, Any]):
        import torch

        model, tokenizer = served.model, served.tokenizer
        texts, pairs = zip(*(self.text_input(item) for item in inputs))
        paired = [p is not None for p in pairs]
        if all(paired) or not any(paired):
            encoded = tokenizer(list(texts), list(pairs) if any(paired) else None, truncation=True,
                                max_length=served.max_length, padding=True, return_tensors="pt")
        else:  # single texts and pairs mixed: one tokenizer call takes one or the other, so encode each alone
            rows = [tokenizer(t, p, truncation=True, max_length=served.max_length) for t, p in zip(texts, pairs)]
            encoded = tokenizer.pad(rows, return_tensors="pt")
        encoded = {k: v.to(model.device) for k, v in encoded.items()}
        with torch.inference_mode():
            return model(**encoded).logits.float().cpu()

    def training_labels(self, mapping: dict[str, str], train: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The label column of the training file and its statistics, after the checks every
        sequence task shares (roles mapped, inputs are text, no missing labels)."""
        self.mapping_param_missing(mapping)
        self.check_inputs(mapping, train, "training_file")
        column = mapping["label"]
        require_no_missing(train[column], column, "column_mapping.label", "training_file")
        return column, train[column]

    @staticmethod
    def mapping_param_missing(mapping: dict[str, str]) -> None:
        for role in ("text", "label"):
            if not mapping.get(role):
                raise FieldProblem(f"column_mapping.{role}",
                                   f"column_mapping.{role} is required: name the file column that holds the {role}.")
