"""Causal language models: ``{"prompt", "completion"}`` rows, chat ``{"messages": [...]}`` rendered
with the tokenizer's chat template (or one given with the job), or preference pairs (app/ml/tasks/
preference.py) for DPO. Supervised training learns the completion / assistant tokens only by default,
so the model learns to answer rather than to echo prompts. Evaluated by loss and perplexity (DPO: by
reward accuracy and margin); served as HF text-generation and OpenAI completions."""

from __future__ import annotations

import math
import threading
import weakref
from itertools import islice

from app.config import get_settings
from app.ml.chat_templates import TemplateError, TemplateLimitError, render_batch, template_budget
from app.ml.tasks import preference
from app.ml.tasks.base import FieldProblem, Task, dominant_kind, find_column, require_column, require_text

PROMPT_NAMES = ("prompt", "instruction")
COMPLETION_NAMES = ("completion", "response", "chosen")
MESSAGES_NAMES = ("messages", "conversation", "conversations")
ROLES = ("system", "user", "assistant", "developer", "tool")
IGNORE = -100
# New tokens an HF text-generation request gets when it does not say (parameters.max_new_tokens).
PREDICT_NEW_TOKENS = 64
# Stand-in conversations used to check a chat template before a job is queued: that it renders, and
# that the assistant turns of a longer conversation can be found in its rendering.
PROBE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]
TWO_TURNS = [{"role": "system", "content": "Be brief."}, *PROBE, {"role": "user", "content": "Why?"},
             {"role": "assistant", "content": "Because."}]
# What the probe may take in all, in renderings' time limits (it renders six times; a fitting template
# takes microseconds for each).
PROBE_BUDGET_RENDERINGS = 2
# Conversations rendered per round trip while tokenizing: enough to amortise the IPC, few enough that
# their renderings (each up to FT_TEMPLATE_MAX_CHARS) are never many held at once.
RENDER_CHUNK_ROWS = 16


def _template(tokenizer) -> tuple[str, dict]:
    """The template and the variables ``apply_chat_template`` renders it with (the special tokens)."""
    return tokenizer.get_chat_template(), dict(tokenizer.special_tokens_map)


def render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, …)``, rendered under the template limits
    (app/ml/chat_templates.py). Raises TemplateError / TemplateLimitError."""
    template, variables = _template(tokenizer)
    item = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    return render_batch(template, variables, [item])[0]["text"]


def assistant_spans_batch(tokenizer, conversations: list) -> list[tuple[str, list[tuple[int, int]]]]:
    """Each conversation rendered, with the character span of each assistant turn (its end-of-turn
    marker included, so the model learns to stop). A turn's span is what rendering it adds after
    the generation prompt; a template whose renderings are not prefixes of each other gives none.
    The helper that renders finds the spans itself, so only the full renderings come back."""
    template, variables = _template(tokenizer)
    answers = render_batch(template, variables, [{"messages": m, "spans": True} for m in conversations])
    return [(a["text"], [(start, end) for start, end in a["spans"]]) for a in answers]


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    return assistant_spans_batch(tokenizer, [messages])[0]


# The turn-end tokens of each loaded tokenizer, for the template it had then: serving asks for them on
# every generation, and a rendering is a round trip to a helper process.
_turn_ends: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_turn_ends_lock = threading.Lock()


def turn_end_ids(tokenizer) -> list[int]:
    """The special token that closes an assistant turn in the chat template (``<|im_end|>``,
    ``<|eot_id|>``…): generation stops there, as it does at end of text."""
    template = tokenizer.chat_template
    with _turn_ends_lock:
        cached = _turn_ends.get(tokenizer)
    if cached is not None and cached[0] == template:
        return list(cached[1])
    full = render(tokenizer, PROBE)
    at = full.rfind(PROBE[-1]["content"])  # a template that drops the content has no turn end to find
    after = full[at + len(PROBE[-1]["content"]):] if at >= 0 else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ids = ids[:1] if ids and ids[0] in special else []
    with _turn_ends_lock:
        _turn_ends[tokenizer] = (template, ids)
    return list(ids)


class TextGeneration(Task):
    name = "text-generation"
    roles = {"prompt": False, "completion": False, "messages": False, "input": False, "preferred_output": False,
             "non_preferred_output": False}
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    length_roles = ("prompt", "completion", "messages")
    max_seq_length_cap = 1024
    metrics_from_predictions = False
    headline_metric = "eval_perplexity"
    head_is_new = False  # the language-model head is the base model's own
    default_hyperparameters = {"completion_only_loss": True, "packing": True}

    def guess_mapping(self, profile):
        pairs = preference.guess_mapping(profile)
        if pairs:
            return pairs
        messages = find_column(profile, MESSAGES_NAMES)
        if messages:
            return {"messages": messages}
        mapping = {}
        for role, names in (("prompt", PROMPT_NAMES), ("completion", COMPLETION_NAMES)):
            column = find_column(profile, names, "str")
            if column:
                mapping[role] = column
        return mapping

    def detect(self, profile):
        mapping = self.guess_mapping(profile)
        if preference.is_preference(mapping):
            return mapping if len(mapping) == 3 else None
        if "messages" in mapping:
            stats = profile[mapping["messages"]]
            return mapping if set(stats.get("kinds") or {}) == {"list"} and \
                set(stats.get("item_kinds") or {}) == {"dict"} else None
        return mapping if len(mapping) == 2 else None

    def _check_columns(self, mapping, profile, file_param):
        if preference.is_preference(mapping):
            preference.check_columns(mapping, profile, file_param)
            return
        if mapping.get("messages"):
            stats = require_column(profile, mapping["messages"], "column_mapping.messages", file_param)
            bad = {k: line for k, line in (stats.get("kind_lines") or {}).items() if k != "list"}
            if bad or set(stats.get("item_kinds") or {}) - {"dict"}:
                line = min(bad.values(), default=None)
                raise FieldProblem("column_mapping.messages", f"Column '{mapping['messages']}' of {file_param} must "
                                   "hold a list of {\"role\", \"content\"} messages on every row"
                                   + (f" (line {line} does not)." if line else "."))
            return
        for role in ("prompt", "completion"):
            if not mapping.get(role):
                raise FieldProblem(f"column_mapping.{role}", "Map either column_mapping.messages (chat) or both "
                                   "column_mapping.prompt and column_mapping.completion.")
            require_text(profile, mapping[role], f"column_mapping.{role}", file_param)

    def plan(self, mapping, train, valid):
        self._check_columns(mapping, train, "training_file")
        if valid is not None:
            self._check_columns(mapping, valid, "validation_file")
        if preference.is_preference(mapping):
            # A prompt given as OpenAI's input object, or as a list of messages, is a chat.
            chat = bool(mapping.get("input")) or dominant_kind(train[mapping["prompt"]]) == "list"
            return {"format": "preference", "chat": chat, "chat_template": None}
        return {"format": "messages" if mapping.get("messages") else "prompt_completion", "chat_template": None}

    def check_rows(self, records, mapping, file_param):
        if preference.is_preference(mapping):
            preference.check_rows(records, mapping, file_param)
            return
        if not mapping.get("messages"):
            return
        for line, record in records:
            messages = record.get(mapping["messages"])
            for message in messages or []:
                if not isinstance(message, dict) or message.get("role") not in ROLES or \
                        not isinstance(message.get("content"), str):
                    raise FieldProblem("column_mapping.messages", f"Line {line} of {file_param}: each message needs "
                                       f"a role ({', '.join(ROLES)}) and a text content; got {str(message)[:80]}.")
            if not any(m["role"] == "assistant" for m in messages or []):
                raise FieldProblem("column_mapping.messages", f"Line {line} of {file_param} has no assistant "
                                   "message: there is nothing to learn from it.")

    def check_base_model(self, path, model_type, plan):
        super().check_base_model(path, model_type, plan)
        if plan["format"] != "messages" and not plan.get("chat"):
            return
        from transformers import AutoTokenizer

        tokenizer = self.prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)), plan)
        if not tokenizer.chat_template:
            raise FieldProblem("chat_template", "The base model's tokenizer has no chat template, so chat messages "
                               "cannot be turned into text. Pass 'chat_template' (a Jinja template, as in "
                               "tokenizer_config.json) with the job, or upload prompt/completion rows instead.")
        try:
            # Both probes in one round trip, and under one budget: each rendering has the time limit, but
            # a template just under it would otherwise cost this request six times as much.
            with template_budget(PROBE_BUDGET_RENDERINGS * get_settings().template_timeout_s):
                template, variables = _template(tokenizer)
                _, two_turns = render_batch(template, variables, [
                    {"messages": PROBE, "add_generation_prompt": True}, {"messages": TWO_TURNS, "spans": True}])
            spans = two_turns["spans"]
        except TemplateLimitError as exc:
            raise FieldProblem("chat_template", exc.message) from None
        except (TemplateError, ValueError) as exc:  # ValueError: a dict of templates without a default
            raise FieldProblem("chat_template", f"The chat template does not render: {exc}") from None
        # Pairs always need the answers told apart from their prompt.
        if (plan.get("completion_only_loss", True) or plan["format"] == "preference") and len(spans) != 2:
            # Training on the assistant turns only needs to find them: the rendering of a conversation's
            # beginning must be where the whole rendering begins. Templates that rewrite earlier turns
            # (drop their reasoning, number them from the end) are not, and would train on every token.
            raise FieldProblem("chat_template", "The chat template renders earlier turns differently once later "
                               "turns follow, so the assistant's tokens cannot be told apart from the rest. Use a "
                               "template whose rendering of a conversation starts with the rendering of its "
                               "beginning, or set hyperparameters.completion_only_loss to false to train on "
                               "every token.")

    def prepare_tokenizer(self, tokenizer, plan):
        if plan.get("chat_template"):
            tokenizer.chat_template = plan["chat_template"]
        if tokenizer.pad_token is None:  # GPT-2-style models have none; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def row(self, record, mapping, plan):
        if plan["format"] == "preference":
            return preference.preference_row(record, mapping, pairs=plan.get("method") == "dpo")
        if plan["format"] == "messages":
            messages = [{"role": m["role"], "content": m["content"]} for m in record[mapping["messages"]]]
            return {"messages": messages, "prompt": None, "completion": None}
        return {"messages": None, "prompt": str(record[mapping["prompt"]]),
                "completion": str(record[mapping["completion"]])}

    def tokenize(self, batch, tokenizer, plan, max_length):
        """Raises TemplateError (or TemplateLimitError) with ``line`` set to the line of the file the
        failing conversation came from (the batch's ``line`` column, where the worker gives one)."""
        if plan.get("method") == "dpo":
            return preference.tokenize_pairs(batch, tokenizer, max_length, assistant_spans_batch)
        completion_only = plan.get("completion_only_loss", True)
        ids_out, labels_out = [], []
        rows = list(zip(batch["messages"], batch["prompt"], batch["completion"]))
        lines = batch["line"] if "line" in batch else [None] * len(rows)
        rendered: dict[int, tuple[str, list[tuple[int, int]]]] = {}
        for number, (messages, prompt, completion) in enumerate(rows):
            if messages is not None:
                if number not in rendered:
                    # The next few conversations in one round trip to the rendering helper; a few, so that
                    # the renderings held at once stay small however long each may be.
                    rendered = self._render_chats(tokenizer, rows, lines, number)
                text, spans = rendered[number]
                encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                    truncation=True, max_length=max_length)
                ids = encoded["input_ids"]
                trained = [any(s <= start < e for s, e in spans) or not spans
                           for start, _ in encoded["offset_mapping"]]
            else:
                prompt_ids = tokenizer(prompt)["input_ids"]
                answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = (prompt_ids + answer)[:max_length]
                trained = ([False] * len(prompt_ids) + [True] * len(answer))[:max_length]
            labels = [t if keep or not completion_only else IGNORE for t, keep in zip(ids, trained)]
            ids_out.append(ids)
            labels_out.append(labels)
        return {"input_ids": ids_out, "attention_mask": [[1] * len(i) for i in ids_out], "labels": labels_out}

    @staticmethod
    def _render_chats(tokenizer, rows, lines, first: int) -> dict[int, tuple[str, list[tuple[int, int]]]]:
        numbers = list(islice((n for n in range(first, len(rows)) if rows[n][0] is not None), RENDER_CHUNK_ROWS))
        try:
            return dict(zip(numbers, assistant_spans_batch(tokenizer, [rows[n][0] for n in numbers])))
        except TemplateError as exc:
            exc.line = lines[numbers[exc.index]]
            raise

    def collator(self, tokenizer, model, pad_to_multiple_of, packing_length=None):
        from transformers import DataCollatorForSeq2Seq

        if packing_length:
            from app.ml.packing import PackingCollator

            return PackingCollator(tokenizer.pad_token_id, packing_length, pad_to_multiple_of)
        # Pads input_ids and attention_mask, and labels with IGNORE so padding is never trained on.
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, pad_to_multiple_of=pad_to_multiple_of)

    def load_model(self, path, plan, **load_kwargs):
        model = super().load_model(path, plan, **load_kwargs)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return model

    def metrics(self, predictions, labels, plan, features=None, tokenizer=None):
        return {}

    def derived_metrics(self, evaluated):
        loss = evaluated.get("eval_loss")
        return {"eval_perplexity": math.exp(min(loss, 50.0))} if loss is not None else {}

    checks_requests = True

    def checked_parameters(self, served, inputs, parameters):
        """The inputs are prompts, the settings valid, the prompts fit the model's context (or are
        truncated as ``parameters.truncate`` asks)."""
        from app.ml.generation import checked_parameters

        prompts, _ = self._prompts_and_full_text(inputs, parameters)
        return checked_parameters(served, prompts, parameters, PREDICT_NEW_TOKENS, "inputs")

    def predict(self, served, inputs, parameters):
        from app.ml.generation import generate

        prompts, full = self._prompts_and_full_text(inputs, parameters)
        results = generate(served, prompts, parameters, PREDICT_NEW_TOKENS, param="inputs")
        return [{"generated_text": (prompt if full else "") + r.text} for prompt, r in zip(prompts, results)]

    @staticmethod
    def _prompts_and_full_text(inputs, parameters) -> tuple[list[str], bool]:
        if not all(isinstance(item, str) for item in inputs):
            raise FieldProblem("inputs", "Each input must be a prompt string.")
        full = parameters.get("return_full_text", False)
        if not isinstance(full, bool):
            raise FieldProblem("parameters.return_full_text", "return_full_text must be true or false.")
        return list(inputs), full
