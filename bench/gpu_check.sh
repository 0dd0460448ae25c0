#!/usr/bin/env bash
# One call on a GPU machine (or any machine): what the device is, the GPU-relevant tests, and the
# training and serving benchmarks, as short tables (about 7 minutes on an H100). Downloads nothing.
# On the lent GPU machines (Python 3.12 with CUDA torch, no web/queue/database packages), first run
# `bash bench/gpu_wheels.sh` here and carry ".whl": the wheels are installed into /tmp/site. Elsewhere
# it uses .venv from `make install`.
#
#   bash bench/gpu_check.sh [seconds per load level, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    PY=${PYTHON:-python3}
else
    PY=${PYTHON:-.venv/bin/python}
fi
SECONDS_PER_LEVEL=${1:-10}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== device"
"$PY" - <<'PY'
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}")
else:
    print(f"no GPU: CPU only ({torch.get_num_threads()} threads), torch {torch.__version__}")
PY

echo "== training core, fast-defaults and serving tests (tiny models; on a GPU they train and serve in bf16)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_training_core.py tests/test_performance.py tests/test_serving.py \
    2>&1 | tail -n 3

echo "== training benchmark (bench/training.py: service vs bare Trainer defaults vs hand-tuned)"
"$PY" -m bench.training 2>&1 | grep -E "^(device|bert-base|gpt2|minilm|run|service|bare|hand-tuned)"
if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "== the same at a requested batch of 256 (BERT-base, 40,000 rows): how far a large batch takes MFU"
    timeout 240 "$PY" -m bench.training --shape bert-base --rows 40000 --batch 256 --no-bare-defaults 2>&1 \
        | grep -E "^(bert-base|run|service|hand-tuned)" || echo "(did not finish in 240 s)"
fi

echo "== QLoRA (bench/qlora_check.py): the same LoRA job on a ~300M decoder, bf16 base vs 4-bit NF4 base"
timeout 180 "$PY" -m bench.qlora_check 2>&1 | grep -E "^(device|run|bf16|4-bit|stored|no CUDA|QLoRA|[A-Za-z.]*Error)" \
    || echo "(failed or did not finish in 180 s)"

echo "== serving benchmark (bench/serving.py)"
"$PY" -m bench.serving --seconds "$SECONDS_PER_LEVEL" 2>&1 | grep -E "^(load generator|device|clients| +[0-9]+ )"
