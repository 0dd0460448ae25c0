"""Preference pairs, the text-generation task's third format: a prompt and two answers to it, one
preferred. OpenAI's shape is one JSON object a line, ``{"input": {"messages": […]}, "preferred_output":
[assistant message], "non_preferred_output": [assistant message]}``; TRL's ``{"prompt", "chosen",
"rejected"}`` with strings maps onto the same roles.

A DPO job trains on both sides of each pair (``tokenize_pairs``); a supervised job on the same file
trains on the preferred side alone, as an ordinary chat or prompt/completion row (``preference_row``),
so that one file serves "SFT, then DPO on top"."""

from __future__ import annotations

from itertools import islice
from typing import Any

from app.ml.tasks.base import FieldProblem, find_column, require_column

INPUT_NAMES = ("input",)
PROMPT_NAMES = ("prompt",)
PREFERRED_NAMES = ("preferred_output", "chosen")
REJECTED_NAMES = ("non_preferred_output", "rejected")
SIDES = ("preferred_output", "non_preferred_output")
ROLES = ("input", "prompt", *SIDES)
MESSAGE_ROLES = ("system", "user", "assistant", "developer", "tool")
# Pairs rendered per round trip to the chat-template helper (each pair is two renderings).
RENDER_CHUNK_PAIRS = 8


class PromptTooLong(Exception):
    """A pair whose prompt leaves no room for an answer within max_seq_length."""

    def __init__(self, line: int | None, tokens: int, limit: int):
        super().__init__(f"line {line}: prompt of {tokens} tokens, limit {limit}")
        self.line, self.tokens, self.limit = line, tokens, limit


def guess_mapping(profile: dict[str, Any]) -> dict[str, str]:
    """The preference roles found by column name, or {} when the file has no pair of sides."""
    preferred = find_column(profile, PREFERRED_NAMES)
    rejected = find_column(profile, REJECTED_NAMES)
    if not (preferred and rejected):
        return {}
    mapping = {"preferred_output": preferred, "non_preferred_output": rejected}
    prompt_input = find_column(profile, INPUT_NAMES)
    if prompt_input:
        mapping["input"] = prompt_input
    else:
        prompt = find_column(profile, PROMPT_NAMES)
        if prompt:
            mapping["prompt"] = prompt
    return mapping


def is_preference(mapping: dict[str, str]) -> bool:
    return any(mapping.get(side) for side in SIDES)


def check_columns(mapping: dict[str, str], profile: dict[str, Any], file_param: str) -> None:
    for side in SIDES:
        if not mapping.get(side):
            raise FieldProblem(f"column_mapping.{side}", "Preference pairs need both column_mapping.preferred_output "
                               "and column_mapping.non_preferred_output.")
        require_column(profile, mapping[side], f"column_mapping.{side}", file_param)
    if bool(mapping.get("input")) == bool(mapping.get("prompt")):
        raise FieldProblem("column_mapping.input", "Preference pairs need their prompt: map column_mapping.input "
                           "(OpenAI's {\"messages\": […]}) or column_mapping.prompt (text or a list of messages), "
                           "not both.")
    role = "input" if mapping.get("input") else "prompt"
    require_column(profile, mapping[role], f"column_mapping.{role}", file_param)


# --- one record ---------------------------------------------------------------------------------

def _messages(value: Any, where: str, param: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise FieldProblem(param, f"{where} must be a non-empty list of {{\"role\", \"content\"}} messages.")
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES or \
                not isinstance(message.get("content"), str):
            raise FieldProblem(param, f"{where}: each message needs a role ({', '.join(MESSAGE_ROLES)}) and a text "
                                      f"content; got {str(message)[:80]}.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _prompt(record: dict[str, Any], mapping: dict[str, str], line: Any, file_param: str):
    """The prompt as a list of messages (chat) or a string (plain text)."""
    if mapping.get("input"):
        value = record.get(mapping["input"])
        if not isinstance(value, dict) or "messages" not in value:
            raise FieldProblem("column_mapping.input", f"Line {line} of {file_param}: '{mapping['input']}' must be "
                               "an object {\"messages\": […]} (OpenAI's preference format).")
        return _messages(value["messages"], f"Line {line} of {file_param}: input.messages", "column_mapping.input")
    value = record.get(mapping["prompt"])
    if isinstance(value, str) and value:
        return value
    return _messages(value, f"Line {line} of {file_param}: the prompt", "column_mapping.prompt")


def _answer(record: dict[str, Any], mapping: dict[str, str], side: str, line: Any, file_param: str) -> str:
    """One side's answer text: a list holding one assistant message, or a plain string."""
    column = mapping[side]
    value = record.get(column)
    param = f"column_mapping.{side}"
    if value is None or value == [] or value == "":
        raise FieldProblem(param, f"Line {line} of {file_param} has no {side} ('{column}' is missing or empty): "
                                  "each pair needs both answers.")
    if isinstance(value, str):
        return value
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        raise FieldProblem(param, f"Line {line} of {file_param}: {side} must be a list of exactly one assistant "
                                  "message, [{\"role\": \"assistant\", \"content\": \"…\"}]; got "
                                  f"{str(value)[:80]}.")
    return value[0]["content"]


def read_pair(record: dict[str, Any], mapping: dict[str, str], line: Any = "?", file_param: str = "training_file"):
    """(prompt, preferred, non-preferred) of one record; FieldProblem naming the line when it is not a pair."""
    prompt = _prompt(record, mapping, line, file_param)
    preferred = _answer(record, mapping, "preferred_output", line, file_param)
    rejected = _answer(record, mapping, "non_preferred_output", line, file_param)
    if preferred == rejected:
        raise FieldProblem("column_mapping.preferred_output", f"Line {line} of {file_param}: the preferred and "
                           "non-preferred answers are identical, so the pair teaches nothing. Remove the row or "
                           "fix one side.")
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise FieldProblem("column_mapping.input", f"Line {line} of {file_param}: the prompt's last message is the "
                           "assistant's; it must end where the answers begin (a user turn).")
    return prompt, preferred, rejected


def check_rows(records, mapping: dict[str, str], file_param: str) -> None:
    for line, record in records:
        read_pair(record, mapping, line, file_param)


def preference_row(record: dict[str, Any], mapping: dict[str, str], pairs: bool) -> dict[str, Any]:
    """A record as the text-generation task's canonical columns. For DPO (``pairs``): the prompt as
    ``messages`` or ``prompt``, the answers as ``completion`` and ``rejected``. For supervised
    training: the prompt followed by the preferred answer, as a chat or prompt/completion row."""
    prompt, preferred, rejected = read_pair(record, mapping)
    chat = isinstance(prompt, list)
    if pairs:
        return {"messages": prompt if chat else None, "prompt": None if chat else prompt,
                "completion": preferred, "rejected": rejected}
    if chat:
        return {"messages": [*prompt, {"role": "assistant", "content": preferred}], "prompt": None,
                "completion": None, "rejected": None}
    return {"messages": None, "prompt": prompt, "completion": preferred, "rejected": None}


# --- tokenizing pairs ---------------------------------------------------------------------------

def tokenize_pairs(batch: dict[str, list], tokenizer, max_length: int, spans_of) -> dict[str, list]:
    """Canonical pair rows → TRL's ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (and ``length``).

    A chat prompt is rendered twice, followed by each answer, through the sandboxed chat template
    (``spans_of``: conversations → (text, assistant spans)); each rendering is tokenized whole and cut
    where the answer's span begins, so the prompt tokens are exactly those the model sees before
    answering, and the answer keeps its end-of-turn marker. A plain-text prompt is tokenized as the
    supervised prompt/completion format does it: prompt, then answer and end of text.
    Raises PromptTooLong (with the row's line) for a prompt that leaves no room for an answer."""
    prompts, chosen_out, rejected_out, lengths = [], [], [], []
    rows = list(zip(batch["messages"], batch["prompt"], batch["completion"], batch["rejected"]))
    lines = batch["line"] if "line" in batch else [None] * len(rows)
    rendered: dict[int, tuple[list[int], list[int], list[int]]] = {}
    for number, (messages, prompt, preferred, rejected) in enumerate(rows):
        if messages is not None:
            if number not in rendered:
                rendered = _render_pairs(tokenizer, rows, lines, number, spans_of)
            prompt_ids, chosen_ids, rejected_ids = rendered[number]
        else:
            prompt_ids = tokenizer(prompt)["input_ids"]
            end = [tokenizer.eos_token_id]
            chosen_ids = tokenizer(preferred, add_special_tokens=False)["input_ids"] + end
            rejected_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"] + end
        if len(prompt_ids) >= max_length:
            raise PromptTooLong(lines[number], len(prompt_ids), max_length)
        # TRL's collator cuts prompt + answer to max_length (keeping the start); cut here already, so
        # the lengths that size batches and count tokens are the ones trained on.
        room = max_length - len(prompt_ids)
        prompts.append(prompt_ids)
        chosen_out.append(chosen_ids[:room])
        rejected_out.append(rejected_ids[:room])
        # Both sequences are trained on: prompt + preferred, and prompt + non-preferred.
        lengths.append(2 * len(prompt_ids) + len(chosen_out[-1]) + len(rejected_out[-1]))
    return {"prompt_ids": prompts, "chosen_ids": chosen_out, "rejected_ids": rejected_out, "length": lengths}


def _render_pairs(tokenizer, rows, lines, first: int, spans_of) -> dict[int, tuple[list[int], list[int], list[int]]]:
    from app.ml.chat_templates import TemplateError

    numbers = list(islice((n for n in range(first, len(rows)) if rows[n][0] is not None), RENDER_CHUNK_PAIRS))
    conversations = []
    for n in numbers:
        messages, _, preferred, rejected = rows[n]
        conversations += [[*messages, {"role": "assistant", "content": preferred}],
                          [*messages, {"role": "assistant", "content": rejected}]]
    try:
        renderings = spans_of(tokenizer, conversations)
    except TemplateError as exc:
        exc.line = lines[numbers[exc.index // 2]]
        raise
    out = {}
    for k, n in enumerate(numbers):
        chosen_prompt, chosen_ids = _split_at_answer(tokenizer, *renderings[2 * k])
        rejected_prompt, rejected_ids = _split_at_answer(tokenizer, *renderings[2 * k + 1])
        # Both renderings share the prompt; where tokens merge across the boundary they may differ by
        # a token, and the shorter common prefix is the prompt (as TRL does).
        shared = _common_prefix(chosen_prompt, rejected_prompt)
        out[n] = (chosen_prompt[:shared], chosen_prompt[shared:] + chosen_ids, rejected_prompt[shared:] + rejected_ids)
    return out


def _split_at_answer(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """A rendered conversation's tokens before its last assistant turn, and the turn's own tokens
    (what follows it, such as a trailing newline, is left out)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if not spans:  # a template whose turns cannot be found: the whole rendering after the prompt
        return [], list(ids)
    start, end = spans[-1]
    prompt = [t for t, (s, _) in zip(ids, offsets) if s < start]
    answer = [t for t, (s, _) in zip(ids, offsets) if start <= s < end]
    return prompt, answer


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
