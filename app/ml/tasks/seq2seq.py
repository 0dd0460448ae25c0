"""Text-to-text on encoder-decoder models (T5, BART…): summarization, translation, rewriting. A
``source`` text in, a ``target`` text out; evaluated on generated text with ROUGE, served in the HF
summarization shape (``[{"summary_text": …}]``)."""

from __future__ import annotations

from app.ml.tasks.base import FieldProblem, Task, dominant_kind, find_column, require_text

SOURCE_NAMES = ("source", "document", "article", "dialogue", "input", "src", "text")
TARGET_NAMES = ("target", "summary", "highlights", "abstract", "output", "tgt")
IGNORE = -100


class Summarization(Task):
    name = "summarization"
    roles = {"source": True, "target": True}
    auto_model = "AutoModelForSeq2SeqLM"
    headline_metric = "eval_rougeL"
    head_is_new = False  # a pretrained encoder-decoder already writes text
    peft_task_type = "SEQ_2_SEQ_LM"
    length_roles = ("source",)
    max_seq_length_cap = 512
    evaluates_generations = True

    def guess_mapping(self, profile):
        mapping = {}
        source, target = find_column(profile, SOURCE_NAMES, "str"), find_column(profile, TARGET_NAMES, "str")
        if source:
            mapping["source"] = source
        if target and target != source:
            mapping["target"] = target
        return mapping

    def detect(self, profile):
        mapping = self.guess_mapping(profile)
        if len(mapping) != 2:
            return None
        target = profile[mapping["target"]]
        # A short, repetitive "target" is a class label, not a text to generate.
        distinct = target.get("distinct")
        free_text = distinct is None or len(distinct) > max(20, target["non_null"] // 2)
        return mapping if dominant_kind(target) == "str" and free_text else None

    def plan(self, mapping, train, valid):
        for role in self.roles:
            if not mapping.get(role):
                raise FieldProblem(f"column_mapping.{role}", f"column_mapping.{role} is required: name the column "
                                                             f"holding each row's {role} text.")
        for profile, file_param in ((train, "training_file"), (valid, "validation_file")):
            if profile is not None:
                for role in self.roles:
                    require_text(profile, mapping[role], f"column_mapping.{role}", file_param)
        # Targets get room for their longest text in tokens (≈ 4 characters each), within bounds.
        longest = train[mapping["target"]].get("text_chars_max") or 0
        return {"max_target_length": int(min(512, max(32, longest // 3 + 8)))}

    def row(self, record, mapping, plan):
        return {"source": str(record[mapping["source"]]), "target": str(record[mapping["target"]])}

    def tokenize(self, batch, tokenizer, plan, max_length):
        encoded = tokenizer(batch["source"], truncation=True, max_length=max_length)
        encoded["labels"] = tokenizer(text_target=batch["target"], truncation=True,
                                      max_length=int(plan["max_target_length"]))["input_ids"]
        return encoded

    def collator(self, tokenizer, model, pad_to_multiple_of, packing_length=None):
        from transformers import DataCollatorForSeq2Seq

        # With the model, the collator also builds decoder_input_ids (labels shifted right).
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        import numpy as np
        from rouge_score import rouge_scorer, scoring

        pad = tokenizer.pad_token_id
        predictions = np.where(np.asarray(predictions) < 0, pad, predictions)
        labels = np.where(np.asarray(labels) == IGNORE, pad, labels)
        guesses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        truths = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
        totals = scoring.BootstrapAggregator()
        for guess, truth in zip(guesses, truths):
            # rougeLsum splits on newlines: one sentence per line.
            totals.add_scores(scorer.score(truth.replace(". ", ".\n"), guess.replace(". ", ".\n")))
        result = totals.aggregate()
        return {key: float(value.mid.fmeasure) for key, value in result.items()}

    def predict(self, served, inputs, parameters):
        from app.ml.generation import generate_text_to_text  # app.ml.generation imports this package

        for item in inputs:
            if not isinstance(item, str):
                raise FieldProblem("inputs", "Each input must be a text string.")
        encoded = served.tokenizer(list(inputs), truncation=True, max_length=served.max_length, padding=True,
                                   return_tensors="pt")
        # Predictions generate up to the longest target seen in training, unless asked otherwise.
        default = int(served.plan.get("max_target_length", 128))
        return [{"summary_text": text} for text in generate_text_to_text(served, encoded, parameters, default)]
