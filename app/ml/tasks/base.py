"""What a task is. Each task module answers, in one place, every task-specific question that the API
(detect, validate), the worker (rows → tensors, model class, metrics) and inference (outputs → the
Hugging Face wire format) ask. Nothing task-specific is written anywhere else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_NAMES = ("text", "sentence", "content", "review", "document", "input", "question", "sentence1", "premise")
PAIR_NAMES = ("text_pair", "sentence2", "hypothesis")
LABEL_NAMES = ("label", "labels", "target", "score", "class", "category", "y")


@dataclass
class FieldProblem(Exception):
    """A request field (``param``) that cannot work with the files, and what to change."""

    param: str
    message: str


# Which list of model types each Auto class accepts (to refuse a base model before queueing).
_MAPPING_NAMES = {
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
}


class Task(ABC):
    name: str
    # role → required; a column mapping gives each role a column of the file.
    roles: dict[str, bool]
    # The HF Inference API answers one input of some tasks (text classification) as a list holding one
    # output, and of others (token classification) with the bare output.
    nests_single_output: bool = True
    # The transformers Auto class that puts this task's head on a base model, and peft's name for it.
    auto_model: str = "AutoModelForSequenceClassification"
    peft_task_type: str = "SEQ_CLS"
    # The roles whose text lengths size max_seq_length, and the cap on the automatic choice.
    length_roles: tuple[str, ...] = ("text", "text_pair")
    max_seq_length_cap: int = 256
    # Seq2seq tasks score generated text, so evaluation runs generate() (Seq2SeqTrainer).
    evaluates_generations: bool = False
    # Causal LMs are scored by loss alone: gathering vocabulary-sized logits would exhaust memory.
    metrics_from_predictions: bool = True
    # The model inputs that are targets (Trainer's label_names).
    label_names: tuple[str, ...] = ("labels",)
    # Hyperparameters only this task has, with their defaults.
    default_hyperparameters: dict[str, Any] = {}
    # The evaluation metric a job's "before → after" is told in.
    headline_metric: str = "eval_accuracy"
    # Whether fine-tuning puts a new, untrained head on the base model: before training it then scores
    # at chance, which a job says rather than leaving its "before" out.
    head_is_new: bool = True

    @abstractmethod
    def detect(self, profile: dict[str, Any]) -> dict[str, str] | None:
        """The column mapping under which a file with this profile is this task, or None."""

    def guess_mapping(self, profile: dict[str, Any]) -> dict[str, str]:
        """Columns that look like this task's roles by name alone: the defaults when the user named
        the task but not every column."""
        return {}

    @abstractmethod
    def plan(self, mapping: dict[str, str], train: dict[str, Any], valid: dict[str, Any] | None) -> dict[str, Any]:
        """Check the files against the mapping (raising FieldProblem) and return what training needs
        to know about them (label names, target scaling), stored on the job."""

    def check_base_model(self, path: Path, model_type: str, plan: dict[str, Any]) -> None:
        """Raise FieldProblem when the base model cannot take this task (wrong architecture, no chat
        template…), before anything is queued."""
        from transformers.models.auto import modeling_auto

        names = getattr(modeling_auto, _MAPPING_NAMES[self.auto_model])
        if model_type not in names:
            raise FieldProblem("model", f"The base model is a '{model_type}', which has no {self.name} head in "
                                        f"transformers. Pick a base model of one of these types: "
                                        f"{', '.join(sorted(names)[:12])}, ….")

    @abstractmethod
    def row(self, record: dict[str, Any], mapping: dict[str, str], plan: dict[str, Any]) -> dict[str, Any]:
        """One file record → the task's canonical columns (``text``, ``text_pair``, ``labels``)."""

    @abstractmethod
    def tokenize(self, batch: dict[str, list], tokenizer, plan: dict[str, Any], max_length: int) -> dict[str, list]:
        """A batch of canonical rows → model inputs (no padding: the collator pads per batch). May
        return more or fewer rows than it got (long QA contexts become several windows)."""

    def check_rows(self, records, mapping: dict[str, str], file_param: str) -> None:
        """Row-level checks the column profile cannot answer (e.g. two lists of equal length per
        row), run over the file's records before the job is queued; raise FieldProblem naming the line."""

    def plan_with_options(self, plan: dict[str, Any], hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """The plan plus this task's own hyperparameters (completion_only_loss…), which tokenizing
        needs to see."""
        return {**plan, **{k: hyperparameters[k] for k in self.default_hyperparameters if k in hyperparameters}}

    def prepare_tokenizer(self, tokenizer, plan: dict[str, Any]):
        """Adjust a base model's tokenizer for this task (a pad token, a chat template)."""
        return tokenizer

    def collator(self, tokenizer, model, pad_to_multiple_of: int | None, packing_length: int | None = None):
        """Pads each batch to its own longest row (dynamic padding). Tasks that can pack examples
        into shared rows do so when given ``packing_length``."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def model_kwargs(self, plan: dict[str, Any]) -> dict[str, Any]:
        """How the new head is configured (number and names of labels)."""
        return {}

    def load_model(self, path: str, plan: dict[str, Any], **load_kwargs):
        """The base model with this task's head, configured from the plan. ``load_kwargs`` go to
        from_pretrained as they are (QLoRA's quantization config and device map); a task that overrides
        this method passes them on."""
        return self._auto_class().from_pretrained(path, **self.model_kwargs(plan), use_safetensors=True,
                                                  trust_remote_code=False, **load_kwargs)

    def load_trained(self, path: str):
        """A model this service fine-tuned for this task (full weights), ready for inference."""
        return self._auto_class().from_pretrained(path, use_safetensors=True, trust_remote_code=False)

    def _auto_class(self):
        import transformers

        return getattr(transformers, self.auto_model)

    @abstractmethod
    def metrics(self, predictions, labels, plan: dict[str, Any], features=None, tokenizer=None) -> dict[str, float]:
        """Evaluation metrics from the model's raw outputs and the reference labels. ``features`` is
        the tokenized evaluation set, for tasks that map windows back to examples."""

    def derived_metrics(self, evaluated: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the others (perplexity from loss), added to every evaluation."""
        return {}

    # Whether prediction requests need checking against the loaded model before they join a batch.
    checks_requests: bool = False

    def checked_parameters(self, served, inputs: list[Any], parameters: dict[str, Any]) -> dict[str, Any]:
        """Checks of a whole prediction request that need the loaded model (text generation: prompts against
        its context), run before the request joins a batch so that it fails alone, never inside the model's
        lock. Returns the parameters the batch runs with. Called only when ``checks_requests``."""
        return parameters

    @abstractmethod
    def predict(self, served, inputs: list[Any], parameters: dict[str, Any]) -> list[Any]:
        """Run a loaded model (``served``: model, tokenizer, plan, max_length) on a batch of wire-format
        inputs; return one wire-format output each."""

    # Shared helpers ------------------------------------------------------------------------------

    def text_input(self, item: Any, param: str = "inputs") -> tuple[str, str | None]:
        """Wire input → (text, text_pair). Accepts a string or ``{"text", "text_pair"}``."""
        if isinstance(item, str):
            return item, None
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            pair = item.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise FieldProblem(param, "'text_pair' must be a string.")
            return item["text"], pair
        raise FieldProblem(param, "Each input must be a string or an object {\"text\": …, \"text_pair\": …}.")


def find_column(profile: dict[str, Any], names: tuple[str, ...], kind: str | None = None) -> str | None:
    lowered = {c.lower(): c for c in profile}
    for name in names:
        column = lowered.get(name)
        if column and (kind is None or dominant_kind(profile[column]) == kind):
            return column
    return None


def dominant_kind(stats: dict[str, Any]) -> str | None:
    kinds = stats.get("kinds") or {}
    if not kinds:
        return None
    numeric = kinds.get("int", 0) + kinds.get("float", 0)
    top = max(kinds, key=kinds.get)
    return "number" if numeric >= kinds[top] else top


def require_column(profile: dict[str, Any], column: str, param: str, file_param: str) -> dict[str, Any]:
    if column not in profile:
        raise FieldProblem(param, f"Column '{column}' is not in {file_param}; its columns are: "
                                  f"{', '.join(profile) or 'none'}. Set {param} to one of them.")
    return profile[column]


def require_no_missing(stats: dict[str, Any], column: str, param: str, file_param: str) -> None:
    if stats["nulls"]:
        lines = ", ".join(map(str, stats["null_lines"][:10]))
        raise FieldProblem(param, f"Column '{column}' of {file_param} has {stats['nulls']} missing value(s) "
                                  f"(lines {lines}). Fill or remove those rows.")


def require_text(profile: dict[str, Any], column: str, param: str, file_param: str) -> None:
    stats = require_column(profile, column, param, file_param)
    require_no_missing(stats, column, param, file_param)
    kinds = stats.get("kinds") or {}
    other = {k: v for k, v in kinds.items() if k != "str"}
    if other and kinds.get("str", 0) == 0:
        raise FieldProblem(param, f"Column '{column}' of {file_param} holds {', '.join(other)} values, not text. "
                                  f"Map {param} to a text column.")
    if {"list", "dict"} & set(kinds):
        bad = min(stats["kind_lines"].get(k, 10**12) for k in ("list", "dict"))
        raise FieldProblem(param, f"Column '{column}' of {file_param} has a non-text value on line {bad}.")


def labels_config(labels: list[str]) -> dict[str, Any]:
    """The config fields that name a classification head's outputs."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}
