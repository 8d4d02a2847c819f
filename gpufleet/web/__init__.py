"""The web page: static HTML, CSS and JavaScript (ES modules) in ``static/``, served
by the gpufleet server itself at ``/``.

Nothing is built or downloaded: the files are plain, versioned here, and the page
talks only to the REST API of the server that serves it (the same routes as the
CLI), so it works on an air-gapped cluster and needs no Node.js.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
#: Revalidate every time: after an upgrade the browser must not mix old and new modules.
NO_CACHE = {"Cache-Control": "no-cache"}


class _RevalidatedFiles(StaticFiles):
    """StaticFiles whose answers tell the browser to revalidate (ETag) before reuse."""

    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # starlette's signature
        response = super().file_response(*args, **kwargs)
        response.headers.update(NO_CACHE)
        return response


def mount_web(app: FastAPI) -> None:
    """``GET /`` is the page; ``/web/*`` its assets. Called after the API routes, which
    therefore keep their JSON 404s (nothing is mounted over ``/v1``)."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    app.mount("/web", _RevalidatedFiles(directory=STATIC_DIR), name="web")
