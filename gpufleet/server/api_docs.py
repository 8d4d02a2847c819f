"""The API docs page (`/docs`), served whole by the gpufleet server.

Why: FastAPI's default page loads Swagger UI's JavaScript and CSS from a CDN, so on a machine
without internet (most GPU clusters) it rendered blank. The assets come from the PyPI package
`swagger-ui-bundle-v2` (Swagger UI 5, which reads the OpenAPI 3.1 FastAPI writes) and are
served under `/docs/assets`; the page makes no request to another host. `/redoc`, whose
assets would come from a CDN too, leads to `/docs`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def add_api_docs(app: FastAPI) -> None:
    """Call on an app created with ``docs_url=None, redoc_url=None``, before the web page's routes."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        return RedirectResponse("/docs")

    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
