"""The web page's static files: served at / by the app, self-contained (no other
host, every module import resolves), and their lists of choices match the API's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
from fastapi.testclient import TestClient

from gpufleet.core.backends.registry import with_capability
from gpufleet.core.metadata import CATEGORIES
from gpufleet.core.placement_spec import Strategy
from gpufleet.core.schemas import BackendName
from gpufleet.server.app import create_app
from gpufleet.web import STATIC_DIR

ASSETS = sorted(p for p in STATIC_DIR.iterdir() if p.suffix in (".js", ".css", ".html"))


@pytest.fixture
def client(tmp_path: Path):  # noqa: ANN201
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda op, params: "", run_controller=False, auth=False)
    with TestClient(app) as c:
        yield c


def test_page_and_assets_are_served_without_shadowing_the_api(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/main.js">' in page.text
    assert page.headers["cache-control"] == "no-cache"
    for asset in ASSETS:
        r = client.get(f"/web/{asset.name}")
        assert r.status_code == 200, asset.name
        assert r.headers["cache-control"] == "no-cache"
        if asset.suffix == ".js":
            assert "javascript" in r.headers["content-type"]  # browsers refuse modules otherwise
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}  # still the API's JSON
    assert client.get("/web/../app.py").status_code == 404
    assert client.get("/v1/health").json()["status"] == "ok"


def test_no_request_to_another_host() -> None:
    for asset in ASSETS:
        text = asset.read_text()
        urls = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", text, re.IGNORECASE)
        assert urls == [], f"{asset.name} refers to another host: {urls}"
        assert "@import" not in text and "cdn" not in text.lower(), asset.name


def test_every_module_import_resolves() -> None:
    checked = 0
    for asset in STATIC_DIR.glob("*.js"):
        for target in re.findall(r"^import .* from \"(\./[^\"]+)\";$", asset.read_text(), re.MULTILINE):
            assert (STATIC_DIR / target).is_file(), f"{asset.name} imports missing {target}"
        for names, target in re.findall(r"^import \{([^}]+)\} from \"(\./[^\"]+)\";$", asset.read_text(), re.MULTILINE):
            exported = (STATIC_DIR / target).read_text()
            for name in (n.strip() for n in names.split(",")):
                assert re.search(rf"^export (?:async )?(?:function|const|class|let) {name}\b", exported, re.MULTILINE), \
                    f"{asset.name} imports {name}, which {target} does not export"
                checked += 1
    assert checked > 30  # the pattern does read the imports


def js_list(name: str) -> list[str]:
    text = (STATIC_DIR / "constants.js").read_text()
    match = re.search(rf"export const {name} = \[([^\]]*)\];", text)
    assert match, name
    return re.findall(r'"([^"]+)"', match.group(1))


def test_choices_match_the_api() -> None:
    assert js_list("CATEGORIES") == list(CATEGORIES)
    assert js_list("BACKENDS") == list(get_args(BackendName))
    assert js_list("STRATEGIES") == list(get_args(Strategy))
    assert js_list("KV_CACHE_BACKENDS") == list(with_capability("kv_cache_extension"))
