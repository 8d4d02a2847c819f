"""A real vox-box serves a generated speech-to-text model from gpufleet's launch description.

The engine's environment is installed (or found complete) through
`gpufleet.runtimes.environments.install` under the machine's cache root
(`${GPUFLEET_ENGINES_HOME:-~/.cache/gpufleet/engines}`), like the node installs it; a cold install
takes minutes and gigabytes, a warm one returns at once. The model is a tiny random-weight
Whisper converted to faster-whisper's CTranslate2 format by that environment's interpreter
(`tests/support/voxbox_models.py`): vox-box detects it as a faster-whisper model from its files.

vox-box is started exactly as the node starts it: `<env>/bin/python -m <program>` followed by
`vox_box.build_launch(...)`'s argv, with its environment, on a CPU placement; the test waits on
the description's health paths and then posts a WAV to the OpenAI-style transcription route.
The text is random bytes (random weights); the route, status and shape of the answer are real.

vox-box answers its own errors with HTTP 200 and a body like
``{"status_code": 400, "detail": ...}`` (its routes *return* FastAPI's HTTPException), and it
exits with status 0 after logging a fatal start-up error, so the test checks bodies, not only
statuses, and fails with the log when the process is gone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.core.backends import vox_box
from gpufleet.core.backends.registry import VOX_BOX
from gpufleet.core.schemas import DeploymentConfig, ModelSource, Placement
from gpufleet.runtimes import environments
from tests.support.servers import free_port, tail
from tests.support.voxbox_models import write_tiny_whisper, write_tone_wav

pytestmark = pytest.mark.voxbox

HOST = "127.0.0.1"
VERSION = VOX_BOX.default_version
DEVICE = "cpu"
REQUEST_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def voxbox_python() -> Path:
    """The interpreter of vox-box's environment in the machine cache (installed on first use)."""
    root = environments.machine_cache_root()
    lines: list[str] = []
    try:
        environments.install("vox-box", VERSION, DEVICE, root, progress=lines.append)
    except environments.EngineInstallError as exc:
        pytest.fail(f"installing vox-box {VERSION} ({DEVICE}) under {root} failed: {exc}")
    python = environments.python_of(root, "vox-box", VERSION, DEVICE)
    assert python is not None, f"install returned but {root} holds no complete vox-box {VERSION} environment"
    return python


@pytest.fixture(scope="module")
def tiny_whisper(voxbox_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_whisper(voxbox_python, tmp_path_factory.mktemp("models") / "tiny-whisper")


class Started:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path, launch_to_healthy_s: float) -> None:
        self.proc, self.base, self.log, self.launch_to_healthy_s = proc, base, log, launch_to_healthy_s


@pytest.fixture(scope="module")
def server(voxbox_python: Path, tiny_whisper: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    work = tmp_path_factory.mktemp("voxbox")
    port = free_port(HOST)
    config = DeploymentConfig(source=ModelSource(local_path=str(tiny_whisper)), backend="vox-box",
                              category="speech-to-text", env={"HF_HUB_OFFLINE": "1"})
    spec = vox_box.build_launch(config, metadata=None, placement=Placement(worker="local", stage="cpu"),
                                model_path=str(tiny_whisper), host=HOST, port=port, data_dir=str(work / "data"))
    assert spec.program.kind == "python-module"
    argv = spec.command([str(voxbox_python), "-m", spec.program.name])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(spec.env)
    log = work / "vox-box.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        base = f"http://{HOST}:{port}"
        _wait_ready(proc, base, spec.health_paths, spec.readiness_timeout_s, log)
        elapsed = time.monotonic() - started
        print(f"vox-box {VERSION}: launch -> healthy in {elapsed:.1f} s ({' '.join(argv)})")
        yield Started(proc, base, log, elapsed)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], base: str, paths: tuple[str, ...], timeout: float, log: Path) -> None:
    """Until the first health path answers ``{"status": "ok"}`` (the model is loaded before vox-box binds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vox-box exited with {proc.returncode} before it was healthy:\n{tail(log)}")
        try:
            answer = httpx.get(f"{base}{paths[0]}", timeout=2.0)
            if answer.status_code == 200 and answer.json() == {"status": "ok"}:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    pytest.fail(f"vox-box not healthy after {timeout} s:\n{tail(log)}")


def test_launch_description_serves_a_transcription(server: Started, tmp_path: Path) -> None:
    wav = write_tone_wav(tmp_path / "tone.wav")
    with wav.open("rb") as audio:
        answer = httpx.post(f"{server.base}{vox_box.ROUTES['speech-to-text'][0]}",
                            files={"file": ("tone.wav", audio, "audio/wav")},
                            data={"model": "tiny-whisper", "response_format": "json"}, timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"text"}, f"vox-box answered an error: {body}\n{tail(server.log)}"
    assert isinstance(body["text"], str) and body["text"], body  # random weights: random, but some text
    assert server.proc.poll() is None


def test_verbose_transcription_has_segments(server: Started, tmp_path: Path) -> None:
    wav = write_tone_wav(tmp_path / "tone.wav", seconds=2.0, hz=220.0)
    with wav.open("rb") as audio:
        answer = httpx.post(f"{server.base}/v1/audio/transcriptions",
                            files={"file": ("tone.wav", audio, "audio/wav")},
                            data={"response_format": "verbose_json"}, timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body.get("task") == "transcribe" and body.get("language") == "en", body
    assert body["duration"] == pytest.approx(2.0)
    assert isinstance(body["segments"], list)


def test_models_route_reports_a_faster_whisper_stt_model(server: Started, tiny_whisper: Path) -> None:
    models = httpx.get(f"{server.base}/v1/models", timeout=10.0)
    assert models.status_code == 200
    [model] = models.json()["data"]
    assert (model["id"], model["task_type"], model["backend_framework"]) == (str(tiny_whisper), "stt",
                                                                             "FasterWhisper")


def test_speech_route_refuses_a_speech_to_text_model(server: Started) -> None:
    # vox-box's own refusal, in its own shape (HTTP 200, the error in the body)
    answer = httpx.post(f"{server.base}/v1/audio/speech", json={"model": "x", "input": "hello", "voice": "a"},
                        timeout=REQUEST_TIMEOUT_S)
    assert answer.json().get("status_code") == 400, answer.text
