"""Bounded generation and fair serving. Stop strings, prompts and messages are bounded and checked
against the model's context before they reach it (a clear 400 naming the field, never a 500); stop
strings never cost a walk over the vocabulary; and tenants whose LoRA adapters share one base model
(and its lock) take turns per decoding step, so one tenant's long stream, even one its client stopped
reading, delays another tenant's short request by a step, not by its length.

Models are made in seconds (tests/support/serving_models.py); the same bounds over real HTTP, and the
fairness between two tenants, are in tests/security/test_serving_bounds.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from app.ml.generation import checked_parameters, decoding, generate, stream
from app.ml.inference import FairLock, LoadedModel, ModelCache, in_sorted_batches
from app.ml.tasks import FieldProblem

def _loaded(path: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.ml.tasks.text_generation import TextGeneration

    tokenizer = TextGeneration().prepare_tokenizer(AutoTokenizer.from_pretrained(path), {})
    return LoadedModel("text-generation", AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer, FairLock())


@pytest.fixture(scope="module")
def gpt2(base_models_dir) -> LoadedModel:
    return _loaded(base_models_dir / "tiny" / "gpt2")  # a 256-token context


@pytest.fixture()
def shared(adapters) -> tuple[ModelCache, LoadedModel, LoadedModel]:
    """Adapters a and b loaded as serving loads them: one peft model and one lock for both."""
    cache = ModelCache(2**30)
    a = cache.get("ft:a", "text-generation", adapters["a"])
    b = cache.get("ft:b", "text-generation", adapters["b"])
    assert a.model is b.model and a.lock is b.lock
    return cache, a, b


def _run_all(loaded: LoadedModel, prompts: list[str], **parameters):
    """Generation as serving runs a batch: the model held, its adapter active."""
    return in_sorted_batches(loaded, prompts, 8, lambda chunk: generate(loaded, chunk, parameters, 16))


def _run(loaded: LoadedModel, prompt: str, **parameters):
    return _run_all(loaded, [prompt], **parameters)[0]


# ------------------------------------------------------------------------------------------ unit tests

def test_stop_strings_are_bounded_and_named():
    for stop in (["a", "b", "c", "d", "e"], "x" * 65, [""], [3]):
        with pytest.raises(FieldProblem) as refused:
            decoding({"stop": stop}, 16, prefix="")
        assert refused.value.param == "stop", stop
    with pytest.raises(FieldProblem) as refused:
        decoding({"stop": ["ok", "y" * 100]}, 16)
    assert refused.value.param == "parameters.stop" and "at most 64 characters" in refused.value.message
    assert decoding({"stop": ["a", "b", "c", "x" * 64]}, 16).stops[-1] == "x" * 64


def test_stop_strings_end_rows_without_walking_the_vocabulary(gpt2, monkeypatch):
    import transformers.generation.stopping_criteria as criteria

    walks = []
    monkeypatch.setattr(criteria.StopStringCriteria, "__init__", lambda *a, **k: walks.append(a))
    prompts = ["the movie was", "a terrible boring", "markets fell"]
    free = _run_all(gpt2, prompts, max_new_tokens=24)
    started = time.perf_counter()
    for i, (prompt, answer) in enumerate(zip(prompts * 10, free * 10)):
        stop = answer.text[4 + i % 5: 7 + i % 5]  # a different stop set every request, found mid-answer
        result = _run(gpt2, prompt, max_new_tokens=24, stop=[stop, f"never{i}"])
        assert result.text == answer.text[:answer.text.index(stop)] and result.finish_reason == "stop"
        assert result.completion_tokens < 24  # generation ended at the stop string, not at max_new_tokens
    assert walks == []  # transformers' StopStringCriteria: 0.2-0.4 s per stop set on a 30k vocabulary
    assert time.perf_counter() - started < 10


def test_prompts_are_checked_against_the_context(gpt2):
    long_prompt = "the movie was great " * 60  # 241 tokens of a 256-token context
    with pytest.raises(FieldProblem) as refused:
        checked_parameters(gpt2, ["hi", long_prompt], {"max_new_tokens": 30}, 16, "prompt", prefix="")
    assert refused.value.param == "prompt"
    assert "241 tokens" in refused.value.message and "context of 256 tokens" in refused.value.message
    # No max_tokens: the default shrinks to what fits instead.
    assert checked_parameters(gpt2, [long_prompt], {}, 64, "prompt", prefix="")["max_new_tokens"] == 15
    kept = checked_parameters(gpt2, [long_prompt], {"max_new_tokens": 30, "truncate_prompt_tokens": 100}, 16, "prompt",
                              prefix="")
    assert _run(gpt2, long_prompt, **kept).prompt_tokens == 100
    with pytest.raises(FieldProblem) as refused:
        checked_parameters(gpt2, ["hi"], {"truncate": 256}, 16, "inputs")
    assert refused.value.param == "parameters.truncate"
    # Generation refuses by itself too, should a caller skip the check: nothing reaches the positions.
    with pytest.raises(FieldProblem):
        _run(gpt2, long_prompt, max_new_tokens=30)


def test_fair_lock_gives_each_owner_a_turn_in_arrival_order():
    """Tenant a has three requests waiting, b two, c one: each tenant gets a turn per round, and a
    tenant's own requests run in the order they came."""
    lock, order = FairLock(), []
    lock.acquire()
    arrivals = ["a1", "a2", "a3", "b1", "b2", "c1"]
    threads = [threading.Thread(target=lambda n=n: (lock.acquire(n[0]), order.append(n), lock.release()))
               for n in arrivals]
    for queued, thread in enumerate(threads):
        thread.start()
        while lock.waiting <= queued:  # each waits before the next arrives
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join()
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_long_generation_hands_the_shared_base_over_between_steps(shared):
    """Tenant B's short request on another adapter of the same base runs while A generates 1,500
    tokens; A's answer (greedy) and a seeded sample are what they are alone: each turn re-activates
    the adapter and keeps the random generator's state."""
    _, a, b = shared
    alone = _run(a, "the movie", max_new_tokens=1500)
    sample_alone = _run(a, "the movie", max_new_tokens=300, temperature=1.0, seed=7)
    for parameters, expected in (({"max_new_tokens": 1500}, alone),
                                 ({"max_new_tokens": 300, "temperature": 1.0, "seed": 7}, sample_alone)):
        result = {}
        started = time.perf_counter()
        thread = threading.Thread(target=lambda p=parameters: result.update(a=_run(a, "the movie", **p)))
        thread.start()
        time.sleep(0.2)
        asked = time.perf_counter()
        short = _run(b, "markets fell", max_new_tokens=4, temperature=1.0)
        waited = time.perf_counter() - asked
        thread.join()
        took = time.perf_counter() - started
        assert short.completion_tokens == 4 and result["a"] == expected
        assert waited < 0.5 and waited < took / 4, (waited, took)


def test_an_adapter_evicted_mid_generation_is_deleted_after_it(shared):
    cache, a, _ = shared
    result = {}
    thread = threading.Thread(target=lambda: result.update(a=_run(a, "the movie", max_new_tokens=800)))
    thread.start()
    time.sleep(0.1)
    cache.drop("ft:a")  # waits one step for the lock, then leaves the running generation its adapter
    assert "ft:a" in a.model.peft_config
    thread.join()
    assert result["a"].completion_tokens == 800 and "ft:a" not in a.model.peft_config


def test_closing_a_stream_stops_its_generation(shared):
    _, a, b = shared
    pieces = stream(a, "the movie", {"max_new_tokens": 1500}, 16)
    next(pieces)
    pieces.close()  # what the API does when the client goes away
    started = time.perf_counter()
    while any(t.name == "generate-stream" for t in threading.enumerate()):
        assert time.perf_counter() - started < 1.0
        time.sleep(0.01)
    assert _run(b, "hi", max_new_tokens=2).completion_tokens == 2  # the lock is free
