"""Chat templates render under a time, a memory and an output limit, in helper processes: the same
text as ``tokenizer.apply_chat_template``, and templates that loop or allocate without end refused
quickly with a 400 naming ``chat_template`` (job creation, estimates), a 400 on a chat request, or a
job error naming the row (the worker) — without the API process growing or dying."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from app.ml.chat_template_pool import helper_pids
from app.ml.chat_templates import TemplateError, TemplateLimitError
from app.ml.tasks import get_task
from app.ml.tasks.text_generation import assistant_spans, render
from tests.conftest import upload
from tests.support import task_data as data

TIMES_X = '{{ "x"*100000000 }}{% for m in messages %}{{ m.content }}{% endfor %}'
NESTED_LOOPS = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
DOUBLING = ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
            "{{ ns.s }}")
BOMBS = {"times_x": TIMES_X, "nested_loops": NESTED_LOOPS, "doubling": DOUBLING}
# Renders like CHATML, except that a message saying "boom" doubles a string until memory runs out.
BOOM_ON_ONE_ROW = ("{% for m in messages %}{% if m['content'] == 'boom' %}{% set ns = namespace(s='x') %}"
                   "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}{% endif %}"
                   "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Uses the tokenizer's special tokens and refuses conversations that do not alternate.
BOS_EOS = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "[{{ m['role'] }}] {{ m['content'] }}{% if m.name is defined %} ({{ m.name }}){% endif %}{{ eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture()
def tokenizer(base_models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_models_dir / "tiny" / "gpt2"))


@pytest.fixture(autouse=True)
def warm_helpers(tokenizer):
    """A helper already running, so that timings measure the limits, not an interpreter's start."""
    tokenizer.chat_template = data.CHATML
    render(tokenizer, [{"role": "user", "content": "warm-up"}])


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _reference_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The assistant spans as they were found before rendering moved to helpers, with transformers'
    own apply_chat_template."""
    def rendered(conversation, prompt=False):
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)

    full, spans = rendered(messages), []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prefix, upto = rendered(messages[:i], True), rendered(messages[: i + 1])
            if upto.startswith(prefix) and full.startswith(upto):
                spans.append((len(prefix), len(upto)))
    return full, spans


CONVERSATIONS = [
    data.chat(1)[0]["messages"],
    [{"role": "user", "content": "Hi", "name": None}, {"role": "assistant", "content": "Hello, Ünïcode ✓ \ud83d"},
     {"role": "user", "content": "Again?", "name": "Ann"}, {"role": "assistant", "content": "Yes.\n"}],
]


@pytest.mark.parametrize("template", [data.CHATML, BOS_EOS], ids=["chatml", "bos_eos"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system_user_assistant", "two_turns_unicode"])
def test_renderings_are_those_of_apply_chat_template(tokenizer, template, messages):
    tokenizer.chat_template = template
    if template == BOS_EOS and messages[0]["role"] == "system":
        messages = messages[1:]
    for prompt in (False, True):
        assert render(tokenizer, messages, prompt) == \
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    assert assistant_spans(tokenizer, messages) == _reference_spans(tokenizer, messages)


def test_a_template_that_raises_says_why(tokenizer):
    tokenizer.chat_template = BOS_EOS
    messages = [{"role": "assistant", "content": "I start."}]
    with pytest.raises(Exception) as expected:
        tokenizer.apply_chat_template(messages, tokenize=False)
    with pytest.raises(TemplateError) as refused:
        render(tokenizer, messages)
    assert not isinstance(refused.value, TemplateLimitError)
    assert refused.value.message == str(expected.value) == \
        "Conversation roles must alternate user/assistant/user/assistant/..."


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs/estimate", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
def test_unbounded_templates_are_refused_quickly_without_growing_the_api(client, path, bomb):
    f = upload(client, "chats.jsonl", data.jsonl(data.chat(20))).json()
    before = _rss_mb()
    started = time.monotonic()
    response = client.post(path, json={"training_file": f["id"], "model": "tiny/gpt2", "chat_template": BOMBS[bomb]})
    took = time.monotonic() - started
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "chat_template"
    assert "limit" in error["message"], error["message"]
    if bomb == "nested_loops":
        assert "longer than the server's limit of 1 s" in error["message"]
    assert took < 2.5, f"refused after {took:.1f} s"
    assert _rss_mb() - before < 50
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_an_estimate_names_the_row_a_template_fails_on(client):
    rows = data.chat(40)
    rows[6]["messages"][1]["content"] = "boom"
    f = upload(client, "chats.jsonl", data.jsonl(rows)).json()
    response = client.post("/v1/fine_tuning/jobs/estimate",
                           json={"training_file": f["id"], "model": "tiny/gpt2", "chat_template": BOOM_ON_ONE_ROW})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "chat_template" and error["message"].startswith("Line 7 of training_file:")
    assert "memory" in error["message"]


def test_the_worker_fails_the_job_naming_the_row(tokenizer, tmp_path):
    from worker.preparation import DataFile, prepare
    from worker.token_cache import TokenCache
    from worker.training import TrainingError

    rows = data.chat(30)
    rows[11]["messages"][1]["content"] = "boom"
    path = tmp_path / "chats.jsonl"
    path.write_bytes(data.jsonl(rows))
    task = get_task("text-generation")
    plan = task.plan_with_options({"format": "messages", "chat_template": BOOM_ON_ONE_ROW}, {})
    task.prepare_tokenizer(tokenizer, plan)
    with pytest.raises(TrainingError) as failed:
        prepare(task, tokenizer, str(tmp_path), {"messages": "messages"}, plan, 128, 0,
                DataFile(path, "jsonl"), DataFile(path, "jsonl"), tmp_path / "work", TokenCache(None, 0))
    assert failed.value.code == "chat_template_limit"
    assert failed.value.message.startswith("Line 12 of training_file:"), failed.value.message
    assert "MiB of memory" in failed.value.message


def test_a_chat_request_that_breaks_a_limit_is_a_400(tokenizer):
    from types import SimpleNamespace

    from app.errors import ApiError
    from app.schemas.completions import ChatCompletionRequest
    from app.services.completions import chat_prompt

    tokenizer.chat_template = BOOM_ON_ONE_ROW
    model = SimpleNamespace(tokenizer=tokenizer)
    fine = ChatCompletionRequest(model="ft:x", messages=[{"role": "user", "content": "hello"}])
    assert chat_prompt(model, fine) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    boom = ChatCompletionRequest(model="ft:x", messages=[{"role": "user", "content": "boom"}])
    with pytest.raises(ApiError) as refused:
        chat_prompt(model, boom)
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, "messages", "chat_template_limit")

    tokenizer.chat_template = DOUBLING  # breaks the limit on any conversation: the model is at fault
    with pytest.raises(ApiError) as refused:
        chat_prompt(model, fine)
    assert (refused.value.status, refused.value.param) == (400, "model")


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_stuck_helper_is_replaced_and_the_next_rendering_works(tokenizer):
    messages = [{"role": "user", "content": "hello"}]
    stuck = helper_pids()[-1]  # the helper the next rendering takes
    os.kill(stuck, signal.SIGSTOP)  # answers nothing, as if lost in one long C-level operation
    started = time.monotonic()
    with pytest.raises(TemplateLimitError) as refused:
        render(tokenizer, messages)
    assert refused.value.limit == "time"
    assert time.monotonic() - started < 5
    assert _gone(stuck)
    assert render(tokenizer, messages) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert stuck not in helper_pids()


def test_a_helper_killed_while_idle_is_replaced_transparently(tokenizer):
    messages = [{"role": "user", "content": "hello"}]
    killed = helper_pids()[-1]
    os.kill(killed, signal.SIGKILL)
    assert _gone(killed)
    assert render(tokenizer, messages) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert killed not in helper_pids()


def test_a_timed_out_rendering_leaves_the_helper_usable(tokenizer):
    tokenizer.chat_template = NESTED_LOOPS
    with pytest.raises(TemplateLimitError) as refused:
        render(tokenizer, [{"role": "user", "content": "hello"}])
    assert refused.value.limit == "time"
    tokenizer.chat_template = data.CHATML
    assert render(tokenizer, [{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n"


def test_helpers_are_small_and_bounded():
    for pid in helper_pids():
        status = Path(f"/proc/{pid}/status").read_text()
        rss_mb = int(status.split("VmRSS:")[1].split()[0]) / 1024
        assert rss_mb < 150, f"helper {pid} holds {rss_mb:.0f} MB"
        limits = Path(f"/proc/{pid}/limits").read_text()
        data_limit = next(line for line in limits.splitlines() if line.startswith("Max data size"))
        assert "unlimited" not in data_limit.split()[3], data_limit
