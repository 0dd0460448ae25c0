"""Text regression: one number per text. Targets are standardised for training (a loss on raw
targets in the hundreds diverges at the usual learning rates) and scaled back at prediction."""

from __future__ import annotations

import math

from app.ml.tasks.base import FieldProblem, dominant_kind, require_no_missing
from app.ml.tasks.sequence import SequenceTask


class TextRegression(SequenceTask):
    name = "text-regression"

    def label_fits(self, stats):
        return dominant_kind(stats) == "number" and (not stats["all_integer"] or stats["distinct"] is None)

    def _numeric(self, profile, column, file_param):
        stats = profile[column]
        require_no_missing(stats, column, "column_mapping.label", file_param)
        bad = {k: line for k, line in stats["kind_lines"].items() if k not in ("int", "float")}
        if bad:
            line = min(bad.values())
            raise FieldProblem("column_mapping.label", f"Column '{column}' of {file_param} must hold numbers for "
                                                       f"text-regression; line {line} has a {min(bad, key=bad.get)} value.")
        return stats

    def plan(self, mapping, train, valid):
        self.mapping_param_missing(mapping)
        self.check_inputs(mapping, train, "training_file")
        stats = self._numeric(train, mapping["label"], "training_file")
        if valid is not None:
            self.check_inputs(mapping, valid, "validation_file")
            self._numeric(valid, mapping["label"], "validation_file")
        n = stats["non_null"]
        if stats.get("sum") is None or stats.get("sumsq") is None:
            raise FieldProblem("column_mapping.label", f"Column '{mapping['label']}' of training_file holds numbers too "
                                                       "large to scale (their squares pass 1e308); rescale the targets.")
        mean = stats["sum"] / n
        variance = max(stats["sumsq"] / n - mean * mean, 0.0)
        if n < 2 or variance == 0.0:
            raise FieldProblem("column_mapping.label", f"Column '{mapping['label']}' has the same value on every row; "
                                                       "there is nothing to learn.")
        return {"target_mean": mean, "target_std": math.sqrt(variance), "target_name": mapping["label"]}

    def row(self, record, mapping, plan):
        value = (float(record[mapping["label"]]) - plan["target_mean"]) / plan["target_std"]
        return {**self.row_inputs(record, mapping), "labels": value}

    def model_kwargs(self, plan):
        return {"num_labels": 1, "problem_type": "regression"}

    def load_model(self, path, plan, **load_kwargs):
        model = super().load_model(path, plan, **load_kwargs)
        # Saved in config.json, so inference can undo the scaling without the job at hand.
        model.config.ft_target_mean = plan["target_mean"]
        model.config.ft_target_std = plan["target_std"]
        model.config.id2label = {0: plan["target_name"]}
        model.config.label2id = {plan["target_name"]: 0}
        return model

    headline_metric = "eval_r2"

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        import numpy as np
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        scale, shift = plan["target_std"], plan["target_mean"]
        predicted = np.asarray(predictions).reshape(-1) * scale + shift
        truth = np.asarray(labels).reshape(-1) * scale + shift
        return {"mse": float(mean_squared_error(truth, predicted)), "mae": float(mean_absolute_error(truth, predicted)),
                "r2": float(r2_score(truth, predicted)) if len(truth) > 1 else 0.0}

    def predict(self, served, inputs, parameters):
        values = self.forward(served, inputs, parameters).reshape(-1)
        mean, std, name = served.plan["target_mean"], served.plan["target_std"], served.plan["target_name"]
        # The text-classification shape, so Hugging Face clients parse it; "score" is the predicted value.
        return [[{"label": name, "score": float(v) * std + mean}] for v in values.tolist()]
