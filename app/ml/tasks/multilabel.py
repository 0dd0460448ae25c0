"""Multi-label text classification: each row has a *list* of labels (possibly empty). One sigmoid
per label, so every label is scored on its own; a label is predicted when its score passes 0.5."""

from __future__ import annotations

from app.data.profile import MAX_LABEL_CHARS
from app.data.scan import value_key
from app.ml.tasks.base import FieldProblem, labels_config
from app.ml.tasks.classification import MAX_CLASSES, TextClassification, requested_top_k, sorted_labels

THRESHOLD = 0.5


def _is_label_list(stats) -> bool:
    kinds = stats.get("kinds") or {}
    items = stats.get("item_kinds") or {}
    return set(kinds) == {"list"} and set(items) <= {"str", "int"}


class MultiLabelClassification(TextClassification):
    name = "multi-label-classification"

    def label_fits(self, stats):
        return _is_label_list(stats)

    def plan(self, mapping, train, valid):
        column, stats = self.training_labels(mapping, train)
        if not _is_label_list(stats):
            line = min((v for k, v in (stats.get("kind_lines") or {}).items() if k != "list"), default=None)
            where = f" (line {line})" if line else ""
            raise FieldProblem("column_mapping.label", f"Column '{column}' must hold a list of labels on every "
                                                       f"row{where}, e.g. [\"sports\", \"politics\"] or [].")
        if stats.get("item_distinct") is None:
            raise FieldProblem("column_mapping.label", f"Column '{column}' has more than {MAX_CLASSES} distinct "
                                                       f"values, or values longer than {MAX_LABEL_CHARS} characters: "
                                                       "these are not labels. Is it the right column?")
        labels = sorted_labels(list(stats["item_distinct"]))
        if len(labels) < 2:
            raise FieldProblem("column_mapping.label", f"Every row of '{column}' uses only the label "
                                                       f"{labels[0] if labels else 'none'}; there is nothing to learn.")
        if valid is not None:
            self.check_inputs(mapping, valid, "validation_file")
            unknown = sorted(set(valid[column].get("item_distinct") or {}) - set(labels))
            if unknown:
                raise FieldProblem("validation_file", f"validation_file has labels the training file lacks: "
                                                      f"{', '.join(unknown[:10])}. Every label must be trained on.")
        return {"labels": labels, "label_counts": {k: stats["item_distinct"][k] for k in labels}}

    def row(self, record, mapping, plan):
        present = {value_key(v) for v in record[mapping["label"]]}
        # BCE-with-logits wants float targets, one per label.
        return {**self.row_inputs(record, mapping), "labels": [float(label in present) for label in plan["labels"]]}

    def model_kwargs(self, plan):
        return {**labels_config(plan["labels"]), "problem_type": "multi_label_classification"}

    headline_metric = "eval_f1_micro"

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        import numpy as np
        from sklearn.metrics import f1_score

        predicted = (1 / (1 + np.exp(-np.asarray(predictions))) >= THRESHOLD).astype(int)
        truth = np.asarray(labels).astype(int)
        return {"f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
                "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
                "exact_match": float((predicted == truth).all(axis=1).mean())}

    def predict(self, served, inputs, parameters):
        top_k = requested_top_k(parameters)
        probabilities = self.forward(served, inputs, parameters).sigmoid()
        return self.ranked(probabilities, served.plan["labels"], top_k)
