"""Single-label text classification: labels given as text or integers, any number of classes."""

from __future__ import annotations


from app.data.profile import MAX_LABEL_CHARS
from app.data.scan import value_key
from app.ml.tasks.base import FieldProblem, dominant_kind, labels_config, require_no_missing
from app.ml.tasks.sequence import SequenceTask

MAX_CLASSES = 1000


def requested_top_k(parameters: dict) -> int | None:
    """``parameters.top_k``: how many labels to answer, best first (absent, null or 0: all of them).
    Read before the forward, so a bad value costs nothing."""
    top_k = parameters.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise FieldProblem("parameters.top_k", f"top_k must be a whole number of labels (or null for all of them), "
                                               f"not {str(top_k)[:40]!r}.")
    return top_k or None


def sorted_labels(keys: list[str]) -> list[str]:
    # Integer labels keep their numeric order (so label 10 follows 9); text labels sort alphabetically.
    try:
        return sorted(keys, key=lambda k: float(k))
    except ValueError:
        return sorted(keys)


class TextClassification(SequenceTask):
    name = "text-classification"

    def label_fits(self, stats):
        kind = dominant_kind(stats)
        return kind in ("str", "bool") or (kind == "number" and stats["all_integer"] and stats["distinct"] is not None)

    def plan(self, mapping, train, valid):
        column, stats = self.training_labels(mapping, train)
        kinds = stats.get("kinds") or {}
        if {"list", "dict"} & set(kinds):
            raise FieldProblem("column_mapping.label", f"Column '{column}' holds lists or objects; single-label "
                                                       "classification needs one label per row.")
        if kinds.get("float") and not stats["all_integer"]:
            line = stats["kind_lines"].get("float")
            raise FieldProblem("column_mapping.label", f"Column '{column}' has fractional numbers (line {line}); "
                                                       "use task 'text-regression' to predict a number.")
        if stats["distinct"] is None:
            raise FieldProblem("column_mapping.label", f"Column '{column}' has more than {MAX_CLASSES} distinct "
                                                       f"values, or values longer than {MAX_LABEL_CHARS} characters: "
                                                       "these are not labels. Is it the right column?")
        labels = sorted_labels(list(stats["distinct"]))
        if len(labels) < 2:
            raise FieldProblem("column_mapping.label", f"Column '{column}' has only one class ({labels[0]!r}); "
                                                       "classification needs examples of at least two classes.")
        if valid is not None:
            self.check_inputs(mapping, valid, "validation_file")
            require_no_missing(valid[column], column, "column_mapping.label", "validation_file")
            unknown = sorted(set(valid[column]["distinct"] or {}) - set(labels))
            if unknown:
                raise FieldProblem("validation_file", f"validation_file has labels the training file lacks: "
                                                      f"{', '.join(unknown[:10])}. Every class must be trained on.")
        return {"labels": labels, "label_counts": {k: stats["distinct"][k] for k in labels}}

    def row(self, record, mapping, plan):
        index = {label: i for i, label in enumerate(plan["labels"])}
        return {**self.row_inputs(record, mapping), "labels": index[value_key(record[mapping["label"]])]}

    def model_kwargs(self, plan):
        return {**labels_config(plan["labels"]), "problem_type": "single_label_classification"}

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score

        predicted = np.asarray(predictions).argmax(-1)
        return {"accuracy": float(accuracy_score(labels, predicted)),
                "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0))}

    def predict(self, served, inputs, parameters):
        top_k = requested_top_k(parameters)
        probabilities = self.forward(served, inputs, parameters).softmax(-1)
        return self.ranked(probabilities, served.plan["labels"], top_k)

    @staticmethod
    def ranked(probabilities, id2label, top_k) -> list[list[dict]]:
        """Scores → the HF text-classification shape: each input's labels, best first."""
        outputs = []
        for row in probabilities.tolist():
            ranked = sorted(((id2label[i], p) for i, p in enumerate(row)), key=lambda x: -x[1])
            outputs.append([{"label": label, "score": score} for label, score in ranked[: top_k or None]])
        return outputs
