"""QLoRA on a GPU, through the service's own training core: the same LoRA job on a random-init Llama-shaped
decoder of about 300M parameters (built here from a config: nothing is downloaded), trained twice — on the
base as it loads (bf16) and on the base in 4-bit NF4 (adapter.quantization "4bit") — and one table of peak
GPU memory, the first and last logged training loss, and the evaluation loss before and after. The adapter
trained on the 4-bit base is then put on the unquantized base, as serving does, and scored on the same
rows: its loss there should be close to what the 4-bit base gave (the NF4 rounding it was trained
against is small).

    python -m bench.qlora_check [--layers 24] [--hidden 1024] [--rows 400]

Exits 1 if a loss did not go down or the 4-bit run did not use less memory; without CUDA it prints
"no CUDA: QLoRA check skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

ADAPTER = {"type": "lora", "r": 16}
SETTINGS = {"n_epochs": 1, "batch_size": 8, "per_device_batch_size": 8, "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3, "torch_compile": False, "max_seq_length": 64}


def build_base(root: Path, layers: int, hidden: int) -> Path:
    """The tiny test models' byte-level BPE tokenizer under a Llama of the given depth and width, in
    bf16 as released checkpoints are (random weights, seeded)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.support.tiny_models import build_tiny_gpt2

    path = build_tiny_gpt2(root / "bench" / "llama", n_positions=512)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (path / name).unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    eos_id = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=eos_id,
                         eos_token_id=eos_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(path), safe_serialization=True)
    del model
    return path


def write_rows(root: Path, rows: int) -> Path:
    from tests.support import task_data as data

    path = root / "train.jsonl"
    path.write_bytes(data.jsonl(data.prompt_completion(rows)))
    return path


def _spec(base: Path, train_file: Path, rows: int, quantization: str | None):
    from app.data.scan import scan_file
    from app.ml import hyperparams
    from app.ml.adapters import resolve_adapter
    from app.ml.tasks import get_task
    from worker.training import TrainingSpec

    task = get_task("text-generation")
    profile = scan_file(train_file).profile()
    mapping = task.detect(profile)
    plan = {**task.plan(mapping, profile, None), "method": "supervised"}
    adapter = resolve_adapter({**ADAPTER, "quantization": quantization}, "llama", base)
    resolved = hyperparams.resolve_hyperparameters(SETTINGS, rows, 512, 40, False, task, adapter=adapter)
    return TrainingSpec("text-generation", str(base), mapping, plan, resolved, seed=0, base_model="bench/llama")


def train_once(base: Path, train_file: Path, rows: int, out: Path, quantization: str | None) -> dict:
    """One job through worker.training.train: peak GPU memory, logged losses, evaluation before and after."""
    import torch
    from transformers import TrainerCallback

    from worker.callbacks import NullReporter
    from worker.training import DataFile, train

    class Losses(TrainerCallback):
        def __init__(self):
            self.logged = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logged.append(float(logs["loss"]))

    class Recorder(NullReporter):
        def __init__(self):
            self.events, self.before = [], {}

        def event(self, message, *, level="info", type="message", data=None):
            self.events.append(message)

        def baseline(self, metric, metrics, note):
            self.before = metrics

    losses, reporter = Losses(), Recorder()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    outcome = train(_spec(base, train_file, rows, quantization), DataFile(train_file, "jsonl"), None, out, reporter,
                    progress_interval_s=1.0, extra_callbacks=[losses])
    return {"peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
            "first": losses.logged[0] if losses.logged else float("nan"),
            "last": losses.logged[-1] if losses.logged else float("nan"),
            "eval_before": reporter.before.get("eval_loss", float("nan")),
            "eval_after": outcome.metrics.get("eval_loss", float("nan")), "steps": outcome.steps,
            "seconds": time.monotonic() - started, "packing": not any("Packing is off" in e for e in reporter.events),
            "files": sorted(p.name for p in out.iterdir())}


def served_loss(base: Path, adapter_dir: Path, train_file: Path, quantized: bool) -> float:
    """Mean token loss of the adapter on the first rows, on the base as serving loads it (unquantized, via
    the service's own loader) or on the 4-bit base it was trained on."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.ml.adapters import quantized_load_kwargs
    from app.ml.artifacts import load_base_for_adapters
    from app.ml.tasks import get_task

    if quantized:
        kwargs = quantized_load_kwargs({"adapter": {"quantization": "4bit"}})
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), **kwargs),
                                          str(adapter_dir)).eval()
    else:
        model = load_base_for_adapters(get_task("text-generation"), {}, adapter_dir, base, "served")
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = [json.loads(line) for line in train_file.read_text().splitlines()[:64]]
    batch = tokenizer([r["prompt"] + r["completion"] for r in texts], return_tensors="pt", padding=True)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = float(model(**batch, labels=labels).loss)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return loss


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=400, help="training rows (batch 8, one epoch)")
    ns = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA: QLoRA check skipped")
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-qlora-"))
    base = build_base(root, ns.layers, ns.hidden)
    train_file = write_rows(root, ns.rows)
    from app.ml.base_models import parameter_count

    parameters = parameter_count(base)
    print(f"device: {torch.cuda.get_device_name(0)}; base: random Llama, {ns.layers} layers × {ns.hidden}, "
          f"{parameters / 1e6:.0f}M parameters (bf16 on disk); LoRA r={ADAPTER['r']}, {ns.rows} rows, batch 8")
    runs = {}
    for label, quantization in (("bf16 base", None), ("4-bit NF4 base", "4bit")):
        runs[label] = train_once(base, train_file, ns.rows, root / label.replace(" ", "-"), quantization)
    print(f"{'run':<16} {'peak GPU MiB':>12} {'first loss':>10} {'last loss':>9} {'eval before':>11} "
          f"{'eval after':>10} {'steps':>5} {'seconds':>7} packing")
    for label, r in runs.items():
        print(f"{label:<16} {r['peak'] / 2**20:>12.0f} {r['first']:>10.3f} {r['last']:>9.3f} {r['eval_before']:>11.3f} "
              f"{r['eval_after']:>10.3f} {r['steps']:>5} {r['seconds']:>7.1f} {'on' if r['packing'] else 'off'}")
    quantized_dir = root / "4-bit-NF4-base"
    print(f"stored (4-bit run): {', '.join(runs['4-bit NF4 base']['files'])}")
    on_4bit = served_loss(base, quantized_dir, train_file, quantized=True)
    served = served_loss(base, quantized_dir, train_file, quantized=False)
    print(f"4-bit-trained adapter, loss on 64 training rows: on the 4-bit base {on_4bit:.3f}, "
          f"on the unquantized base as served {served:.3f} (difference {served - on_4bit:+.3f})")
    ok = all(r["last"] < r["first"] and r["eval_after"] < r["eval_before"] for r in runs.values())
    ok = ok and runs["4-bit NF4 base"]["peak"] < runs["bf16 base"]["peak"]
    ok = ok and "adapter_model.safetensors" in runs["4-bit NF4 base"]["files"]
    print("QLoRA check: " + ("ok" if ok else "FAILED (a loss did not go down, or 4-bit used no less memory)"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
