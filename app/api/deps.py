"""Typed dependencies shared by the routers.

Who is calling was settled by the gate (app.api.gate) before the body was read; a route declares what
the caller must be allowed to do by the dependency it takes:

* ``ReaderProjectDep`` — any key (``predict`` scope and up): reading models;
* ``ServingProjectDep`` — any key, and counted against the project's request rate: predictions and
  completions;
* ``ProjectDep`` — ``train`` keys and up: files, jobs, models, webhooks;
* ``AdminDep`` — ``admin`` keys: managing keys.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.engine import get_session
from app.errors import ApiError
from app.services.keys import Caller, ProjectRef
from app.services.quotas import RequestRate
from app.storage import Storage, get_storage

# scope="function": the transaction commits when the handler returns, before the response is sent, so a
# client that gets a 200 can immediately read what it just created (read-your-writes across requests).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

_request_rate = RequestRate()

WHAT_SCOPES_ALLOW = {"predict": "predictions, completions and reading models",
                     "train": "files, fine-tuning jobs, models and webhooks",
                     "admin": "managing the project's API keys"}


def _caller(request: Request, needed: str) -> Caller:
    found: Caller | None = getattr(request.state, "caller", None)
    if found is None:  # only routes under /v1 take a key, and the gate authenticates all of them
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    if not found.allows(needed):
        raise ApiError(403, f"This API key has the '{found.scope}' scope, which allows "
                            f"{WHAT_SCOPES_ALLOW[found.scope]}; this call needs a '{needed}' key. Ask an admin of "
                            "the project for one.", code="insufficient_scope")
    return found


# The checks are coroutines that depend on nothing but the request: they do no blocking work (a sync
# dependency would cost a thread hop), and each level of dependencies costs FastAPI work per request —
# which is why the bearer scheme is declared in the OpenAPI document (declare_bearer_scheme) rather than
# by a Security() dependency under each of these: that level was a sixth of a job GET's CPU.
def _allowed(needed: str):
    async def caller(request: Request) -> Caller:
        return _caller(request, needed)
    return caller


def _project(needed: str):
    async def project(request: Request) -> ProjectRef:
        return _caller(request, needed).project
    return project


async def _serving_project(request: Request) -> ProjectRef:
    project = _caller(request, "predict").project
    _request_rate.take(project)
    return project


ReaderProjectDep = Annotated[ProjectRef, Depends(_project("predict"))]
ServingProjectDep = Annotated[ProjectRef, Depends(_serving_project)]
ProjectDep = Annotated[ProjectRef, Depends(_project("train"))]
AdminDep = Annotated[Caller, Depends(_allowed("admin"))]


BEARER_SCHEME = {"type": "http", "scheme": "bearer",
                 "description": "An API key of the project: `Authorization: Bearer sk-ft-…`"}


def declare_bearer_scheme(app: FastAPI) -> None:
    """/docs and generated clients send the key: every operation under /v1 (the gate authenticates them
    all) says it takes the bearer scheme."""

    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()  # FastAPI's document, which it keeps in app.openapi_schema
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["HTTPBearer"] = BEARER_SCHEME
            for path, operations in schema["paths"].items():
                if path == "/v1" or path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"HTTPBearer": []}]
        return app.openapi_schema

    app.openapi = openapi
