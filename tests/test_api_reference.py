"""/docs and /openapi.json are the API's reference: every operation is described, and says what its
answer is (a schema, or the media type of a stream or a download)."""

from __future__ import annotations


def test_every_operation_is_described_and_typed(app):
    schema = app.openapi()
    undocumented, untyped = [], []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            if not operation.get("description"):
                undocumented.append(name)
            answer = operation["responses"].get("200", {}).get("content", {})
            if not (answer.get("application/json", {}).get("schema") or set(answer) - {"application/json"}):
                untyped.append(name)
    assert undocumented == [] and untyped == [], (undocumented, untyped)
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
