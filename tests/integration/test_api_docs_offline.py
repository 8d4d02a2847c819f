"""Issue 17: the API docs page (`/docs`) works without internet. Its assets are served by the
gpufleet server itself; a real headless Chromium that cannot resolve any other host renders it."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from gpufleet.server.app import create_app
from tests.support.browser import CHROMEDRIVER, CHROMIUM, check_installed


@pytest.fixture
def app(tmp_path: Path):  # noqa: ANN201
    return create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda op, params: "", run_controller=False, auth=False)


def test_the_docs_page_and_its_assets_come_from_the_server(app) -> None:  # noqa: ANN001
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls  # no other host
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            assert asset in page.text
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 10_000, asset
        assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
        assert client.get("/redoc", follow_redirects=False).headers["location"] == "/docs"
        assert client.get("/openapi.json").json()["info"]["title"] == "gpufleet"
        assert client.get("/").status_code == 200  # the web page is still at /


@pytest.fixture
def served(app) -> Iterator[str]:  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.web
def test_the_docs_page_renders_offline_in_a_browser(served: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    check_installed()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 # offline: every host but this machine fails to resolve
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{served}/docs")
        deadline = time.monotonic() + 30
        title = ""
        while time.monotonic() < deadline:
            found = driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title")
            title = found[0].text if found else ""
            if title:
                break
            time.sleep(0.2)
        assert title.startswith("gpufleet"), driver.page_source[:2000]
        operations = driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        assert any(o.get_attribute("data-path") == "/v1/deployments" for o in operations)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        requested = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert requested and all(u.startswith(served) for u in requested), requested
    finally:
        driver.quit()
