"""Tokenized datasets kept on the worker's disk, keyed by everything that shapes them: the files'
contents, the tokenizer's files, the task, its plan and column mapping, max_seq_length, the hold-out
seed and the library versions. A retried job (attempt 2 after a lost worker) and a repeated job on the
same data (another learning rate, another seed for the model but the same split) skip tokenizing.

Entries are written to a temporary folder and renamed into place, so two workers filling the same
entry never see half of one; the oldest entries go once the cache outgrows its budget."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

FORMAT_VERSION = 2  # bump when tokenization output changes for the same inputs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja")


def file_identity(path: Path, sha256: str | None) -> str:
    if sha256:
        return sha256
    stat = path.stat()  # files are immutable once uploaded; size and mtime identify local copies
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def tokenizer_identity(model_path: str) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        candidate = Path(model_path, name)
        if candidate.is_file():
            digest.update(name.encode())
            digest.update(candidate.read_bytes())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    import datasets
    import transformers

    parts = {**parts, "format": FORMAT_VERSION, "transformers": transformers.__version__,
             "datasets": datasets.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class TokenCache:
    """Entries live under ``root/<namespace>/<key>``: one namespace (a project) never finds another's.
    The budget covers every namespace together."""

    def __init__(self, root: Path | None, budget_bytes: int, namespace: str = ""):
        self.root, self.budget_bytes = root, budget_bytes
        self.folder = root / (namespace or "_") if root is not None else None

    def get_or_build(self, key: str, build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """``build()`` returns ``{"train": Dataset, "eval": Dataset | None, "meta": {...}}``; the cached
        copy of it (loaded from disk, memory-mapped) and whether it came from the cache."""
        from datasets import load_from_disk

        if self.folder is None:
            return build(), False
        entry = self.folder / key
        if (entry / "meta.json").exists():
            entry.touch()  # most recently used
            return self._load(entry, load_from_disk), True
        built = build()
        staging = self.folder / f".{key}.{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for name in ("train", "eval"):
                if built.get(name) is not None:
                    built[name].save_to_disk(str(staging / name))
            (staging / "meta.json").write_text(json.dumps(built["meta"]))
            try:
                staging.rename(entry)
            except OSError:  # another worker filled the same entry first; theirs is as good
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune(keep=entry)
        return (self._load(entry, load_from_disk) if entry.exists() else built), False

    @staticmethod
    def _load(entry: Path, load_from_disk) -> dict[str, Any]:
        return {"train": load_from_disk(str(entry / "train")),
                "eval": load_from_disk(str(entry / "eval")) if (entry / "eval").exists() else None,
                "meta": json.loads((entry / "meta.json").read_text())}

    def _prune(self, keep: Path) -> None:
        entries = [p for folder in self.root.iterdir() if folder.is_dir() for p in folder.iterdir()
                   if p.is_dir() and not p.name.startswith(".")]
        sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in entries}
        total = sum(sizes.values())
        for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.budget_bytes:
                break
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]
