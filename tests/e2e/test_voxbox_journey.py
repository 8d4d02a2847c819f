"""A speech-to-text model on vox-box, end to end: a real Prefect server, the gpufleet server, a
node agent with a declared GPU, and a real vox-box (CPU, since the GPU is declared) started by the
node from gpufleet's launch description.

The journey: deploy a faster-whisper directory by path without naming a backend (gpufleet reads
it as a CTranslate2 speech-to-text model and picks vox-box), transcribe a WAV through the
instance's OpenAI-style route, read its log, delete the deployment (the process goes).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gpufleet.core.backends import vox_box
from gpufleet.core.backends.registry import VOX_BOX
from gpufleet.runtimes import environments
from tests.e2e.conftest import E2ECluster, cmdline, pid_alive, wait_until
from tests.integration.test_voxbox_runtime import voxbox_python  # noqa: F401 - the session fixture
from tests.support.voxbox_models import write_tiny_whisper, write_tone_wav

pytestmark = pytest.mark.voxbox

NODE = "node-s"
WAIT = "600"


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


@pytest.fixture(scope="module")
def speech_node(cluster: E2ECluster, voxbox_python: Path) -> str:  # noqa: F811
    cluster.start_node(NODE, virtual_gpus="L4-8G:1", labels={"pool": "speech"},
                       env={"GPUFLEET_ENGINES_HOME": str(environments.machine_cache_root())})
    return NODE


def test_speech_to_text_on_vox_box(cluster: E2ECluster, speech_node: str, voxbox_python: Path,  # noqa: F811
                                   tmp_path: Path) -> None:
    # named like the hub's repositories, so vox-box's own device rewrite for "faster*whisper" paths would apply
    model = write_tiny_whisper(voxbox_python, tmp_path / "faster-whisper-tiny")
    [worker] = [w for w in cluster.cli_json("workers") if w["name"] == speech_node]
    assert {"engine": "vox-box", "version": VOX_BOX.default_version} in [
        {"engine": e["engine"], "version": e["version"]} for e in worker["engines"]]

    out = cluster.cli("deploy", "--name", "stt", "--local-path", str(model), "--worker-selector", "pool=speech",
                      "--timeout", WAIT, timeout=float(WAIT) + 60)
    assert "deployment stt created with 1 replica(s)" in out.stdout
    [dep] = [d for d in cluster.cli_json("ls") if d["name"] == "stt"]
    assert (dep["backend"], dep["ready_replicas"]) == ("vox-box", 1)
    assert (dep["metadata"]["format"], dep["metadata"]["category"]) == ("ctranslate2", "speech-to-text")
    [inst] = cluster.instances("stt")
    assert inst["state"] == "RUNNING" and inst["worker"] == speech_node and inst["gpu_indexes"] == [0]
    cmd = cmdline(inst["pid"])
    assert cmd[1:4] == ["-m", "vox_box.main", "start"]
    assert Path(cmd[0]).is_relative_to(environments.machine_cache_root())  # the engine's own environment
    assert cmd[cmd.index("--device") + 1] == "cpu"  # a declared GPU: nothing real to drive
    env = environ(inst["pid"])
    assert env["IS_FASTER_WHISPER"] == "false" and env["CUDA_VISIBLE_DEVICES"] == ""

    wav = write_tone_wav(tmp_path / "tone.wav")
    with wav.open("rb") as audio:
        answer = httpx.post(f"http://127.0.0.1:{inst['port']}{vox_box.ROUTES['speech-to-text'][0]}",
                            files={"file": ("tone.wav", audio, "audio/wav")}, data={"response_format": "json"},
                            timeout=120)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"text"}, answer.json()  # vox-box answers its errors with 200 and a detail

    log = cluster.cli("logs", str(inst["id"]), "--tail", "200").stdout
    assert "vox_box.main" in log  # gpufleet's start line, then vox-box's own

    cluster.cli("rm", "stt")
    wait_until(lambda: not pid_alive(inst["pid"]), timeout=60, what="vox-box to stop")
