"""Fixtures. The in-process app (fast API tests) runs on SQLite in a temporary folder; the live stacks
(end-to-end tests) are real processes: `finetune serve` with a real Celery worker, against either the
embedded default (SQLite + SQLite broker) or this machine's PostgreSQL and Redis."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Settings are read once per process: point the in-process app at a scratch folder before any import.
_SCRATCH = Path(tempfile.mkdtemp(prefix="ft-tests-"))
os.environ.update({
    "FT_DATA_DIR": str(_SCRATCH / "inproc"),
    "FT_BASE_MODELS_DIR": str(_SCRATCH / "base_models"),
    "FT_MAX_UPLOAD_BYTES": str(256 * 1024),
    "FT_BOOTSTRAP_API_KEY": "",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
})
for _var in ("FT_DATABASE_URL", "FT_BROKER_URL", "FT_STORAGE_DIR"):
    os.environ.pop(_var, None)
# Under `-n 2` each test process drives its own worker and API processes, all running torch at once: with
# torch's default of one thread per core in each, threads outnumber cores and OpenMP's spin-waits burn the
# difference. A share of the cores per test process (inherited by the processes it starts) keeps them working.
_TEST_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _TEST_PROCESSES > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _TEST_PROCESSES)))

import pytest  # noqa: E402

from tests.support.live import LiveStack, postgres_database, redis_url  # noqa: E402
from tests.support.tiny_models import build_base_models  # noqa: E402

# Fixtures of small served models (a long-context GPT-2 with two LoRA adapters, encoders), for serving tests.
pytest_plugins = ["tests.support.serving_models"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def base_models_dir() -> Path:
    return build_base_models(Path(os.environ["FT_BASE_MODELS_DIR"]))


@pytest.fixture(scope="session")
def app(base_models_dir):
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.main import create_app

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return create_app(settings)


def _key_for(project: str, scope: str = "admin") -> str:
    from app.db.engine import session_scope
    from app.services.keys import issue_key
    from app.services.projects import get_or_create_project

    with session_scope() as session:
        return issue_key(session, get_or_create_project(session, project), scope=scope)[1]


@pytest.fixture()
def client(app):
    """A client of a fresh project, so each test sees only its own objects."""
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {_key_for(f'p-{os.urandom(4).hex()}')}"
        yield c


@pytest.fixture()
def other_client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {_key_for(f'other-{os.urandom(4).hex()}')}"
        yield c


@pytest.fixture(scope="session")
def pg_stack(base_models_dir, tmp_path_factory):
    """The production shape: PostgreSQL, Redis broker, a real worker process."""
    with postgres_database() as db_url:
        # A longer batching window than the default: tiny models answer in about a millisecond, so
        # without it concurrent requests would rarely meet and the batching tests would prove little.
        # A short key memory, so that revocation tests wait 2 s rather than the default 10.
        stack = LiveStack(tmp_path_factory.mktemp("pg-stack"), base_models_dir,
                          database_url=db_url, broker_url=redis_url(), predict_max_wait_ms=25, auth_cache_s=2)
        with stack.running():
            yield stack


@pytest.fixture(scope="session")
def task_models(pg_stack):
    """Fine-tuned models of every task (full, LoRA, merged), trained once per session."""
    from tests.support.task_models import train_task_models

    return train_task_models(pg_stack)


@pytest.fixture(scope="session")
def embedded_stack(base_models_dir, tmp_path_factory):
    """The embedded default: SQLite database, SQLite-backed broker, a real worker process."""
    stack = LiveStack(tmp_path_factory.mktemp("embedded-stack"), base_models_dir)
    with stack.running():
        yield stack


def upload(client, path_or_name, content: bytes | None = None, purpose: str = "fine-tune"):
    if content is None:
        path = Path(path_or_name)
        content, name = path.read_bytes(), path.name
    else:
        name = path_or_name
    return client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})


# The longest files first (the suite's `--durations` report). `make test` runs two processes that take
# whole files in collection order (`-n 2 --dist loadfile`): a long file dealt last leaves the other
# process idle while it runs, so those are dealt first and the short ones fill in around them.
LONGEST_FIRST = ("test_realism.py", "test_tasks.py", "test_serving.py", "test_lifecycle.py",
                 "test_object_storage.py", "test_fuzz.py", "test_integrations.py", "test_import_model.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept
