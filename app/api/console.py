"""The web console: static files (app/console/) served at `/` and `/console/…`.

The page holds no data and takes no key: it is public, like /docs. Everything it shows comes from the
public API, called from the browser with the key the user pasted (kept in sessionStorage). Its answers
carry a strict Content-Security-Policy: scripts, styles and connections from this origin only, no inline
code, no framing — so even an injected string could not run or send a key elsewhere."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
ASSETS_PATH = "/console"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The page's URL never holds a key, but job and model ids need not leak to other sites either.
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> FileResponse:
    # no-cache: a new deployment's page (and the asset names it links) is picked up at once.
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


class _ConsoleAssets(StaticFiles):
    """StaticFiles with the console's security headers on every file it answers."""

    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def mount_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, _ConsoleAssets(directory=CONSOLE_DIR), name="console")
