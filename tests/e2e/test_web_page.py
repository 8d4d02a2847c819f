"""The web page end to end: a real Chromium (headless, Debian's package) driven by
Selenium against the session's real cluster (Prefect server, gpufleet server, two node
agents, llama.cpp servers). Every step is done in the page; the API is only read to
check that the page tells the truth. Screenshots of each page are saved (under
$GPUFLEET_TEST_ARTIFACTS, else pytest's temporary directory), and a test fails when the
browser console shows an error other than the HTTP errors it provokes on purpose."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.keys import Keys

from gpufleet.demo.tiny_model import TinyModelShape, write_tiny_llama_gguf
from tests.e2e.conftest import E2ECluster, chat, cmdline
from tests.support.browser import Browser
from tests.support.fake_hub import FakeHub

pytestmark = [pytest.mark.e2e, pytest.mark.web]

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PHONE = (390, 844)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("GPUFLEET_TEST_ARTIFACTS")
    return Path(root) / "web" if root else tmp_path_factory.mktemp("web-screenshots")


@pytest.fixture
def browser(cluster: E2ECluster, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Browser]:
    b = Browser(cluster.api_url, artifacts / request.node.name)
    if cluster.api_key:  # the page keeps the key it is given in its URL fragment (docs/auth.md)
        b.open(f"/#key={cluster.api_key}")
    try:
        yield b
    finally:
        b.close()


def publish(shot: Path, name: str) -> None:
    """GPUFLEET_WRITE_DOCS_SCREENSHOTS=1 copies a screenshot into docs/images (the README's)."""
    if os.environ.get("GPUFLEET_WRITE_DOCS_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGES / name)


# -- reading the page and the API

def api(cluster: E2ECluster, path: str) -> Any:
    r = httpx.get(f"{cluster.api_url}{path}", timeout=10, headers=cluster.headers)
    return r.json() if r.status_code == 200 else None


def row(name: str) -> str:
    return f'tbody[data-deployment="{name}"] tr.deployment'


def page_instances(b: Browser, name: str) -> list[dict[str, Any]]:
    """The instance rows the page shows for a deployment: id and state text."""
    return b.driver.execute_script(
        "return [...document.querySelectorAll(`tbody[data-deployment='${arguments[0]}'] tr.instance`)]"
        ".map(tr => ({id: Number(tr.dataset.instance), state: tr.querySelector('td[data-label=State]').textContent,"
        " worker: tr.querySelector('td[data-label=Worker]').textContent}))", name)


def wait_running(b: Browser, name: str, n: int, timeout: float = 180) -> list[dict[str, Any]]:
    """Until the page shows n/n ready and n RUNNING instances (without reloading)."""
    b.wait_text(f"{row(name)} td.replicas", rf"^{n} / {n}$", timeout)
    return b.wait(lambda: (rows := page_instances(b, name)) and len(rows) == n
                  and all(r["state"] == "RUNNING" for r in rows) and rows, timeout, f"{n} RUNNING rows of {name}")


def expand(b: Browser, name: str) -> None:
    toggle = b.find(f"{row(name)} button.expand")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()


def confirm(b: Browser, label: str) -> None:
    b.find("dialog.confirm")
    b.click("dialog.confirm button.danger")
    b.wait(lambda: not b.find_all("dialog.confirm"), 10, f"the {label} confirmation to close")


def field_error(b: Browser, input_id: str, pattern: str) -> str:
    """The error line tied to an input (aria-describedby), as the page shows it."""
    return b.wait_text(f"#{input_id}-error", pattern, 30)


def no_horizontal_scroll(b: Browser) -> bool:
    return b.driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


# -- the journeys

def test_local_path_journey(cluster: E2ECluster, browser: Browser, tiny_gguf: Path) -> None:
    b = browser
    name = "webtiny"
    b.open("/")
    b.wait_text("#list-status", r"deployment\(s\)")
    b.screenshot("deployments-before")

    # Deploy Model → Local Path, 2 replicas, compatibility check, Save
    b.click("#deploy-model")
    b.click("#deploy-kind-local_path")
    b.type("#deploy-path", str(tiny_gguf))
    b.find("#deploy-name").click()  # leaving the path field inspects the model
    b.wait_text("#deploy-model-info", r"GGUF · llama .* category llm · backend llama\.cpp")
    assert b.find("#deploy-name").get_attribute("value") == "tiny"  # suggested from the file name
    b.type("#deploy-name", name)
    b.type("#deploy-replicas", "2")
    b.click("#deploy-check")
    b.wait_text("#deploy-check-result", r"2 of 2 replica\(s\) fit")
    assert "GPU 0" in b.text("#deploy-check-result")  # the estimate per device, as `gpufleet plan` shows
    assert api(cluster, f"/v1/deployments/{name}") is None  # a check writes nothing
    b.screenshot("deploy-local-path")
    b.click("#deploy-save")
    b.wait(lambda: not b.find_all("#deploy-form"), 30, "the deploy dialog to close")

    # both replicas RUNNING, live, without reloading
    expand(b, name)
    rows = wait_running(b, name, 2)
    truth = [i for i in api(cluster, f"/v1/instances?deployment={name}") if i["state"] == "RUNNING"]
    assert sorted(r["id"] for r in rows) == sorted(i["id"] for i in truth)
    assert b.text(f"{row(name)} td.source") == str(tiny_gguf)
    assert b.text(f"{row(name)} td[data-label=State]") == "RUNNING"
    shot = b.screenshot("deployments-running")
    publish(shot, "web-deployments.png")

    # a phone-width window: still readable, nothing wider than the screen
    b.resize(*PHONE)
    b.wait(lambda: no_horizontal_scroll(b), 10, "no horizontal scrolling at phone width")
    b.screenshot("deployments-phone")
    b.resize(1400, 1000)

    # View Logs: the backend's start-up lines, then a new line while following
    first = rows[0]
    inst = next(i for i in truth if i["id"] == first["id"])
    b.click(f'tr.instance[data-instance="{first["id"]}"] button[data-action="logs"]')
    log_text = lambda: b.find("#log-text").get_attribute("textContent")  # noqa: E731
    b.wait(lambda: f"[gpufleet] starting on {inst['worker']}" in log_text() and f"--port {inst['port']}" in log_text(),
           60, "the instance's start-up lines")
    b.wait_text("#logs-status", "Following")
    before = len(log_text())
    chat(inst["port"])  # the backend logs the request; the page is following
    b.wait(lambda: len(log_text()) > before and ("chat/completions" in log_text() or "slot" in log_text()),
           60, "the request's log lines to appear while following")
    b.screenshot("instance-logs")
    b.find("#log-text").send_keys(Keys.ESCAPE)
    b.wait(lambda: not b.find_all("#log-text"), 10, "the logs dialog to close")

    # a refused edit shows the error next to its field, and nothing is saved
    b.click(f'{row(name)} button[data-action="edit"]')
    b.find("#edit-note")
    assert "Running instances keep their configuration" in b.text("#edit-note")
    b.click("#edit-param-add")
    b.type("#edit-param-1-a", "--ctx-size")
    b.type("#edit-param-1-b", "big")
    b.type("#edit-replicas", "3")
    b.click("#edit-save")
    b.wait_text('#edit-form .field-error[data-error-for="backend_params"]', r"--ctx-size must be a non-negative integer")
    b.screenshot("edit-refused")
    dep = api(cluster, f"/v1/deployments/{name}")
    assert (dep["replicas"], dep["backend_params"]) == (2, [])  # neither the edit nor the scale happened

    # scale to 3 by editing Replicas (the parameter row emptied: only the scale is sent)
    b.click('#edit-form button[aria-label="Remove parameter 1"]')
    b.click("#edit-save")
    b.wait(lambda: not b.find_all("#edit-form"), 30, "the edit dialog to close")
    wait_running(b, name, 3)
    assert api(cluster, f"/v1/deployments/{name}")["backend_params"] == []

    # Stop (confirmed): instances and their processes go
    b.click(f'{row(name)} button[data-action="stop"]')
    confirm(b, "stop")
    b.wait_text(f"{row(name)} td[data-label=State]", r"^STOPPED$", 120)
    assert b.text(f"{row(name)} td.replicas") == "0 / 0"
    assert page_instances(b, name) == [] and api(cluster, f"/v1/instances?deployment={name}") == []

    # Start: one replica again
    b.click(f'{row(name)} button[data-action="start"]')
    [started] = wait_running(b, name, 1)

    # Delete an instance (confirmed): a replacement appears and runs
    b.click(f'tr.instance[data-instance="{started["id"]}"] button[data-action="delete-instance"]')
    confirm(b, "instance delete")
    replaced = b.wait(lambda: (rows := page_instances(b, name)) and len(rows) == 1 and rows[0]["id"] != started["id"]
                      and rows[0]["state"] == "RUNNING" and rows[0], 180, "a RUNNING replacement instance")
    assert [i["id"] for i in api(cluster, f"/v1/instances?deployment={name}")] == [replaced["id"]]

    # Edit the backend parameters: saved for new instances, the running one keeps its configuration
    b.click(f'{row(name)} button[data-action="edit"]')
    b.click("#edit-param-add")
    b.type("#edit-param-1-a", "--ctx-size")
    b.type("#edit-param-1-b", "256")
    assert api(cluster, f"/v1/deployments/{name}")["restart_on_error"] is True  # the form's default at deploy
    b.click("#edit-restart-on-error")  # auto-restart off, in the same edit
    b.screenshot("edit")
    b.click("#edit-save")
    b.wait(lambda: not b.find_all("#edit-form"), 30, "the edit dialog to close")
    b.wait(lambda: api(cluster, f"/v1/deployments/{name}")["backend_params"] == ["--ctx-size=256"], 10, "the edit saved")
    assert api(cluster, f"/v1/deployments/{name}")["restart_on_error"] is False
    [running] = api(cluster, f"/v1/instances?deployment={name}")
    assert running["id"] == replaced["id"] and running["config"]["backend_params"] == []

    # ... until the edit dialog is asked to replace the running instances
    b.click(f'{row(name)} button[data-action="edit"]')
    b.click("#edit-replace")
    b.click("#edit-save")
    renewed = b.wait(lambda: (rows := page_instances(b, name)) and len(rows) == 1 and rows[0]["id"] != running["id"]
                     and rows[0]["state"] == "RUNNING" and rows[0], 180, "the instance replaced by the edit")
    [running] = api(cluster, f"/v1/instances?deployment={name}")
    assert running["id"] == renewed["id"] and running["config"]["backend_params"] == ["--ctx-size=256"]
    assert "--ctx-size 256" in " ".join(cmdline(running["pid"]))

    # the Workers page: both nodes, and the GPU memory this deployment claims on node-b
    b.click("#nav-workers")
    b.wait_text("#workers", r"node-a[\s\S]*node-b|node-b[\s\S]*node-a")
    card = b.find('article[data-worker="node-b"]')
    assert "READY" in card.text and "T4" in card.text and "llama.cpp" in card.text
    if running["worker"] == "node-b":
        assert "0 B of 1.50 GiB claimed" not in card.text
    b.screenshot("workers")
    # labels set on the page: kept over the node's, matched by selectors; a bad one is refused next to its field
    b.click("#labels-node-a")
    b.click("#labels-add")
    b.type("#labels-1-a", "bad key")
    b.type("#labels-1-b", "x")
    b.click("#labels-save")
    b.wait_text('#labels-form .field-error[data-error-for="labels"]', "invalid label key 'bad key'")
    assert all(w["operator_labels"] == {} for w in api(cluster, "/v1/workers"))  # nothing saved
    b.type("#labels-1-a", "zone")
    b.type("#labels-1-b", "web")
    b.click("#labels-save")
    b.wait_text('article[data-worker="node-a"] .labels', "zone=web")
    [node_a] = [w for w in api(cluster, "/v1/workers") if w["name"] == "node-a"]
    assert node_a["operator_labels"] == {"zone": "web"} and node_a["labels"]["zone"] == "web"
    b.screenshot("workers-labels")
    httpx.patch(f"{cluster.api_url}/v1/workers/node-a", json={"labels": {}}, timeout=10,
                headers=cluster.headers).raise_for_status()
    b.resize(*PHONE)
    b.wait(lambda: no_horizontal_scroll(b), 10, "no horizontal scrolling at phone width")
    b.screenshot("workers-phone")
    b.resize(1400, 1000)
    b.click("#nav-deployments")

    # Delete the deployment (confirmed)
    b.click(f'{row(name)} button[data-action="delete"]')
    confirm(b, "delete")
    b.wait(lambda: not b.find_all(f'tbody[data-deployment="{name}"]'), 120, "the deployment's row to go")
    assert api(cluster, f"/v1/deployments/{name}") is None
    assert b.console_errors(expected_http=[(f"/v1/deployments/{name}", 400), ("/v1/workers/node-a", 422)]) == []


def test_bad_input_is_shown_next_to_its_field(cluster: E2ECluster, browser: Browser, tiny_gguf: Path,
                                             tmp_path: Path) -> None:
    b = browser
    before = sorted(d["name"] for d in api(cluster, "/v1/deployments"))
    b.open("/")
    # keyboard: Enter opens the dialog with the focus inside it, Escape closes it and gives the focus back
    b.find("#deploy-model").send_keys(Keys.ENTER)
    b.wait(lambda: b.driver.switch_to.active_element.get_attribute("id") == "deploy-search", 10, "focus in the dialog")
    b.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    b.wait(lambda: not b.find_all("#deploy-form") and b.driver.switch_to.active_element.get_attribute("id")
           == "deploy-model", 10, "the dialog closed and the focus back on Deploy Model")
    b.find("#deploy-model").send_keys(Keys.ENTER)
    b.find("#deploy-advanced summary").click()
    unlabelled = b.driver.execute_script(
        "return [...document.querySelectorAll('#deploy-form input, #deploy-form select, #deploy-form textarea')]"
        ".filter(el => !el.labels.length && !el.getAttribute('aria-label')).map(el => el.id || el.outerHTML)")
    assert unlabelled == []  # every control has a label a screen reader reads out
    b.click("#deploy-kind-local_path")
    b.type("#deploy-path", str(tiny_gguf))
    b.type("#deploy-name", "webbad")
    b.type("#deploy-replicas", "-1")
    b.click("#deploy-save")
    message = field_error(b, "deploy-replicas", r"greater than or equal to 0")
    assert b.find("#deploy-replicas").get_attribute("aria-invalid") == "true"
    assert b.driver.switch_to.active_element.get_attribute("id") == "deploy-replicas"  # focus goes to it
    b.screenshot("negative-replicas")

    b.type("#deploy-replicas", "1")
    b.type("#deploy-name", "Bad_Name")
    b.click("#deploy-save")
    field_error(b, "deploy-name", r"invalid deployment name 'Bad_Name'")
    assert not b.find_all("#deploy-replicas-error")[0].is_displayed()  # the earlier error is gone
    b.type("#deploy-name", "webbad")

    missing = tmp_path / "no-such-model.gguf"
    b.type("#deploy-path", str(missing))
    b.click("#deploy-save")
    field_error(b, "deploy-path", r"no-such-model\.gguf not found on the gpufleet server")
    assert b.text("#deploy-save") == "Save anyway"  # the workers might have it: saving needs a second press
    b.screenshot("unknown-model-path")
    b.resize(*PHONE)
    b.wait(lambda: no_horizontal_scroll(b) and b.driver.execute_script(
        "const d = document.querySelector('dialog'); return d.scrollWidth <= d.clientWidth + 1"), 10,
        "the dialog fitting a phone-width window")
    b.screenshot("deploy-phone")
    b.resize(1400, 1000)

    bad = tmp_path / "notes.gguf"
    bad.write_text("just some text, not a model\n")
    b.type("#deploy-path", str(bad))
    b.click("#deploy-save")
    field_error(b, "deploy-path", r"is not a valid GGUF file")
    assert sorted(d["name"] for d in api(cluster, "/v1/deployments")) == before  # nothing was saved
    assert message
    assert b.console_errors(expected_http=[("/v1/deployments", 422), ("/v1/models/inspect", 404),
                                           ("/v1/models/inspect", 400), ("/v1/deployments", 400)]) == []


def test_hub_journey(cluster: E2ECluster, browser: Browser, e2e_hub: FakeHub, tmp_path: Path) -> None:
    b = browser
    # Two quantizations of one small real model: Q8_0 is the default gpufleet picks, F32 (about
    # 5 MiB, several of the stand-in's 1 MiB chunks, so its download shows progress) is chosen here.
    shape = TinyModelShape(n_layers=4, hidden=128, ffn=512)
    q8 = write_tiny_llama_gguf(tmp_path / "q8.gguf", dataclasses.replace(shape, dtype="q8_0")).read_bytes()
    f32 = write_tiny_llama_gguf(tmp_path / "f32.gguf", shape).read_bytes()
    assert len(f32) > 3 << 20
    e2e_hub.add_repo("org/webmodel-GGUF", {"webmodel-Q8_0.gguf": q8, "webmodel-F32.gguf": f32,
                                          "README.md": b"tiny"}, downloads=10)
    e2e_hub.add_repo("org/webmodel-base", {"config.json": b"{}"}, downloads=99)
    b.open("/")
    b.click("#deploy-model")
    assert b.find("#deploy-kind-huggingface").is_selected()
    assert b.find("#deploy-gguf").is_selected()
    b.type("#deploy-search", "webmodel")
    b.wait(lambda: [e.get_attribute("data-repo") for e in b.find_all("#deploy-results button.result")]
           == ["org/webmodel-GGUF"], 30, "the GGUF search result only")
    b.click("#deploy-gguf")  # all repositories, most downloaded first
    b.wait(lambda: [e.get_attribute("data-repo") for e in b.find_all("#deploy-results button.result")]
           == ["org/webmodel-base", "org/webmodel-GGUF"], 30, "both search results")
    b.click('#deploy-results button.result[data-repo="org/webmodel-GGUF"]')
    b.wait(lambda: len(b.find_all('#deploy-files input[name="deploy-file"]')) == 2, 30, "the repository's files")
    options = {o.find_element("css selector", "input").get_attribute("value"): o.text
               for o in b.find_all("#deploy-files label.file-option")}
    assert "Q8_0" in options["webmodel-Q8_0.gguf"] and "default" in options["webmodel-Q8_0.gguf"]
    assert "MiB" in options["webmodel-F32.gguf"]  # sizes shown
    assert b.find('#deploy-files input[value="webmodel-Q8_0.gguf"]').is_selected()  # the default preselected
    assert b.find("#deploy-name").get_attribute("value") == "webmodel"
    b.click('#deploy-files input[value="webmodel-F32.gguf"]')
    b.wait_text("#deploy-model-info", r"GGUF · llama")
    b.type("#deploy-name", "webhub")
    b.screenshot("deploy-hub")
    publish(b.shots[-1], "web-deploy-hub.png")
    b.click("#deploy-save")
    b.wait(lambda: not b.find_all("#deploy-form"), 60, "the deploy dialog to close")
    expand(b, "webhub")
    # the download, slowed down by the stand-in, shows its progress live in the instance's state
    e2e_hub.bytes_per_second = 512 * 1024
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while not any(re.fullmatch(r"DOWNLOADING \d+ %", st) for st in seen):
            assert time.monotonic() < deadline, f"no DOWNLOADING n % in the instance row; states seen: {seen}"
            for st in (r["state"] for r in page_instances(b, "webhub")):
                if not seen or seen[-1] != st:
                    seen.append(st)
            time.sleep(0.2)
        b.screenshot("downloading")
    finally:
        e2e_hub.bytes_per_second = None
    [inst] = wait_running(b, "webhub", 1)
    assert b.text(f"{row('webhub')} td.source") == "hf:org/webmodel-GGUF/webmodel-F32.gguf"
    [truth] = api(cluster, "/v1/instances?deployment=webhub")
    assert truth["config"]["source"]["file"] == "webmodel-F32.gguf" and chat(truth["port"])
    pulls = [r for r in e2e_hub.requests("GET", "/resolve/") if not r.range]
    assert {p.path.rsplit("/", 1)[-1] for p in pulls if "webmodel" in p.path} == {"webmodel-F32.gguf"}
    b.screenshot("deployments-hub")
    b.click(f'{row("webhub")} button[data-action="delete"]')
    confirm(b, "delete")
    b.wait(lambda: not b.find_all('tbody[data-deployment="webhub"]'), 120, "the deployment's row to go")
    assert b.console_errors() == []
