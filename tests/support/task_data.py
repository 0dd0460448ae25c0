"""Small synthetic datasets, one per task, with patterns a tiny random model learns in seconds; each
row uses words of the tiny tokenizers' corpus so that nothing is unknown."""

from __future__ import annotations

import json
import random

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
THINGS = ["movie", "story", "plot", "team", "phone", "chip", "script", "film"]
GOOD = ["great", "wonderful", "excellent", "brilliant", "good", "moving"]
BAD = ["terrible", "boring", "awful", "bad", "dull"]
TOPICS = {"sports": "the team won", "markets": "markets fell sharply today", "tech": "new phone released",
          "politics": "election results are in"}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def question_answering(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        who, other = rng.sample(NAMES, 2)
        liked, disliked = rng.sample(THINGS, 2)
        context = f"{who} loved the {liked} . {other} hated the {disliked} ."
        answer = liked
        rows.append({"question": f"what did {who} love ?", "context": context,
                     "answers": {"text": [answer], "answer_start": [context.index(f"the {liked}") + 4]}})
    return rows


def summarization(n: int, seed: int = 0) -> list[dict]:
    """The target is the sentence's first five words: a copy pattern an encoder-decoder picks up."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(NAMES), "and", rng.choice(NAMES)] + rng.sample(THINGS, 3) + [rng.choice(GOOD)]
        rows.append({"source": " ".join(words), "target": " ".join(words[:5])})
    return rows


def prompt_completion(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good = rng.random() < 0.5
        review = f"the {rng.choice(THINGS)} was {rng.choice(GOOD if good else BAD)}"
        rows.append({"prompt": f"{review} =>", "completion": " good" if good else " bad"})
    return rows


def chat(n: int, seed: int = 0) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "rate the review"},
                          {"role": "user", "content": r["prompt"].removesuffix(" =>")},
                          {"role": "assistant", "content": r["completion"].strip()}]}
            for r in prompt_completion(n, seed)]


def preference(n: int, seed: int = 0) -> list[dict]:
    """OpenAI's preference format: the preferred answer names the review's sentiment, the other the opposite."""
    return [{"input": {"messages": [{"role": "system", "content": "rate the review"},
                                    {"role": "user", "content": r["prompt"].removesuffix(" =>")}]},
             "preferred_output": [{"role": "assistant", "content": r["completion"].strip()}],
             "non_preferred_output": [{"role": "assistant",
                                       "content": "bad" if r["completion"].strip() == "good" else "good"}]}
            for r in prompt_completion(n, seed)]


def multi_label(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = sorted(rng.sample(list(TOPICS), rng.choice([1, 1, 2])))
        parts = [TOPICS[t] for t in labels]
        rng.shuffle(parts)
        rows.append({"text": " and ".join(parts), "labels": labels})
    return rows


def scores(n: int, seed: int = 0) -> list[dict]:
    """A rating from 1 to 5 that follows the review's adjective."""
    rng = random.Random(seed)
    return [{"text": f"the {rng.choice(THINGS)} was {word}", "score": 5.0 if word in GOOD else 1.0}
            for word in (rng.choice(GOOD + BAD) for _ in range(n))]


def sentiment(n: int, seed: int = 0) -> list[dict]:
    return [{"text": r["prompt"].removesuffix(" =>"), "label": r["completion"].strip()}
            for r in prompt_completion(n, seed)]


FIRST = ["john", "mary", "ahmed", "li", "sofia", "pierre", "anna", "kenji"]
LAST = ["smith", "garcia", "chen", "dubois", "rossi", "tanaka"]
CITIES = ["paris", "lagos", "tokyo", "lima", "oslo", "cairo", "delhi"]


def ner(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        first, last, city = rng.choice(FIRST), rng.choice(LAST), rng.choice(CITIES)
        if rng.random() < 0.5:
            tokens, tags = [first, "lives", "in", city], ["B-PER", "O", "O", "B-LOC"]
        else:
            tokens, tags = [first, last, "visited", city, "today"], ["B-PER", "I-PER", "O", "B-LOC", "O"]
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows
