"""Pulling hub weights into the node cache: once per file even with concurrent
replicas, reused by later deployments, resumed after an interruption, with
throttled progress, and tokens never in messages."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gpufleet.core.schemas import DeploymentConfig, InstanceView, ModelSource
from gpufleet.core.states import InstanceState
from gpufleet.node import backends, weights
from gpufleet.node.context import NodeContext
from gpufleet.node.weights import PullProgress, pull_hub_model
from gpufleet.sources import read_metadata
from tests.support import synthetic_models as sm
from tests.support.fake_hub import FakeHub
from tests.support.hub_fixtures import fake_hub  # noqa: F401

MiB = 1 << 20


@pytest.fixture
def gguf_repo(fake_hub: FakeHub) -> bytes:
    body = b"GGUF" + os.urandom(3 * MiB)
    fake_hub.add_repo("org/pull-GGUF", {"p-Q4_K_M.gguf": body, "p-Q8_0.gguf": b"GGUF" + bytes(100),
                                        "README.md": b"readme"})
    return body


def hf(file: str | None = None) -> ModelSource:
    return ModelSource(kind="huggingface", repo="org/pull-GGUF", file=file)


def file_gets(hub: FakeHub, name: str = "p-Q4_K_M.gguf") -> list:
    return [r for r in hub.requests("GET", name) if "/resolve/" in r.path]


def test_two_replicas_download_once_and_later_deploys_reuse(fake_hub: FakeHub, gguf_repo: bytes, tmp_path: Path) -> None:
    fake_hub.bytes_per_second = 8 * MiB  # ~0.4 s: long enough for the two pulls to overlap
    results: list[Path] = []
    pulls = [threading.Thread(target=lambda: results.append(pull_hub_model(hf(), tmp_path))) for _ in range(2)]
    for t in pulls:
        t.start()
    for t in pulls:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == gguf_repo
    assert results[0] == tmp_path / "models/hf/org--pull-GGUF/default/p-Q4_K_M.gguf"
    assert len(file_gets(fake_hub)) == 1  # one download for two replicas
    fake_hub.bytes_per_second = None
    pull_hub_model(hf("*Q4_K_M*"), tmp_path)  # another deployment of the same file
    assert len(file_gets(fake_hub)) == 1


def test_interrupted_download_resumes_with_a_range_request(fake_hub: FakeHub, gguf_repo: bytes, tmp_path: Path) -> None:
    fake_hub.fail("p-Q4_K_M.gguf", times=1, status=0, after_bytes=MiB + 123)  # connection cut mid-body
    path = pull_hub_model(hf(), tmp_path)
    assert path.read_bytes() == gguf_repo
    gets = file_gets(fake_hub)
    assert [g.range for g in gets] == [None, f"bytes={MiB + 123}-"]
    assert gets[0].body_bytes == MiB + 123 and gets[1].body_bytes == len(gguf_repo) - MiB - 123


def test_a_part_of_another_file_version_is_not_resumed(fake_hub: FakeHub, gguf_repo: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "models/hf/org--pull-GGUF/default/p-Q4_K_M.gguf"
    dest.parent.mkdir(parents=True)
    Path(f"{dest}.part").write_bytes(b"x" * MiB)
    Path(f"{dest}.part.json").write_text('{"etag": "\\"old\\"", "size": 5}')
    assert pull_hub_model(hf(), tmp_path).read_bytes() == gguf_repo
    assert [g.range for g in file_gets(fake_hub)] == [None]


def test_a_waiting_replica_shows_the_other_pulls_progress(fake_hub: FakeHub, gguf_repo: bytes, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "REPORT_EVERY_S", 0.1)
    monkeypatch.setattr(weights, "WAIT_POLL_S", 0.05)
    fake_hub.bytes_per_second = 3 * MiB  # ~1 s
    first = threading.Thread(target=pull_hub_model, args=(hf(), tmp_path))
    first.start()
    dest = tmp_path / "models/hf/org--pull-GGUF/default/p-Q4_K_M.gguf"
    deadline = time.monotonic() + 10
    while not Path(f"{dest}.part").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen: list[PullProgress] = []
    pull_hub_model(hf(), tmp_path, seen.append)  # waits on the lock meanwhile
    first.join()
    assert len(file_gets(fake_hub)) == 1
    assert any(0 < p.percent < 100 for p in seen), [p.percent for p in seen]
    assert seen[-1].percent == 100


def test_progress_is_throttled_and_ends_at_100(fake_hub: FakeHub, gguf_repo: bytes, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "REPORT_EVERY_S", 0.2)
    fake_hub.bytes_per_second = 2.5 * MiB  # ~1.2 s for 3 MiB
    seen: list[PullProgress] = []
    pull_hub_model(hf(), tmp_path, seen.append)
    percents = [p.percent for p in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert 3 <= len(seen) <= 12  # ~1.2 s / 0.2 s, not one report per chunk
    assert seen[-1].describe().startswith("DOWNLOADING 100 % (3.0 MiB of 3.0 MiB, ")
    assert seen[-1].rate > 0


def test_gated_pull_token_never_in_messages(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add_repo("org/gated-GGUF", {"g-Q4_K_M.gguf": b"GGUF" + bytes(1000)}, token="tok-SECRET")
    monkeypatch.setenv("HF_TOKEN", "tok-SECRET")
    seen: list[PullProgress] = []
    src = ModelSource(kind="huggingface", repo="org/gated-GGUF")
    assert pull_hub_model(src, tmp_path, seen.append).stat().st_size == 1004
    assert seen and all("SECRET" not in p.describe() for p in seen)
    monkeypatch.setenv("HF_TOKEN", "tok-WRONG-SECRET")
    with pytest.raises(Exception) as exc:
        pull_hub_model(src, tmp_path / "other")
    assert "SECRET" not in str(exc.value) and "org/gated-GGUF" in str(exc.value)


def test_cdn_redirects_get_no_token(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LFS files redirect to a signed CDN URL on another host: header reads and pulls
    go there without the token (the hub itself still gets it)."""
    head, size = sm.llama_gguf(sm.LlamaShape())
    body = head + bytes(size - len(head))
    fake_hub.add_repo("org/cdn-GGUF", {"c-Q4_K_M.gguf": body}, token="tok-CDN", cdn=True)
    monkeypatch.setenv("HF_TOKEN", "tok-CDN")
    src = ModelSource(kind="huggingface", repo="org/cdn-GGUF")
    assert read_metadata(src).n_layers == 2
    assert pull_hub_model(src, tmp_path).read_bytes() == body
    cdn = fake_hub.requests(contains="/cdn/")
    assert cdn and not any(r.authorized for r in cdn)
    assert all(r.authorized for r in fake_hub.requests(contains="/resolve/"))


def _instance(source: ModelSource) -> InstanceView:
    now = datetime.now(timezone.utc)
    return InstanceView(id=7, name="d-7", deployment="d", state=InstanceState.SCHEDULED,
                        config=DeploymentConfig(source=source), created_at=now, updated_at=now)


def test_missing_local_path_on_worker_names_worker_and_path(tmp_path: Path) -> None:
    node = NodeContext("gpu-07", tmp_path, "127.0.0.1")
    with pytest.raises(backends.BackendFailed, match="model path /nowhere/m.gguf not found on worker gpu-07"):
        backends.resolve_weights(_instance(ModelSource(local_path="/nowhere/m.gguf")), node)


def test_hub_pull_through_resolve_weights(fake_hub: FakeHub, gguf_repo: bytes, tmp_path: Path) -> None:
    node = NodeContext("gpu-01", tmp_path, "127.0.0.1")
    path = backends.resolve_weights(_instance(hf("p-Q8_0.gguf")), node)
    assert path.name == "p-Q8_0.gguf" and path.stat().st_size == 104
    with pytest.raises(backends.BackendFailed, match=r"hf:org/pull-GGUF.*'\*Q2\*'.* on worker gpu-01"):
        backends.resolve_weights(_instance(hf("*Q2*")), node)


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # noqa: ANN201
    """A 1 MiB tmpfs as the node's model cache (we are root); skipped where mount is refused."""
    import subprocess

    mnt = tmp_path / "cache"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_disk_full_is_said_before_a_byte_is_written(fake_hub: FakeHub, gguf_repo: bytes, small_tmpfs: Path,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_MODEL_CACHE", str(small_tmpfs))
    with pytest.raises(weights.CacheFull, match=r"not enough disk space in the model cache .* needs 3\.0 MiB more"):
        pull_hub_model(hf(), tmp_path)
    assert _leftovers(small_tmpfs) == [] and file_gets(fake_hub) == []


def test_disk_full_while_writing_leaves_nothing_half_written(fake_hub: FakeHub, gguf_repo: bytes, small_tmpfs: Path,
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The free space looked enough (another pull took it meanwhile): the write fails with
    ENOSPC, the part is removed, and the error says so."""
    monkeypatch.setenv("GPUFLEET_MODEL_CACHE", str(small_tmpfs))
    monkeypatch.setattr(weights, "_check_room", lambda *_: None)
    with pytest.raises(weights.CacheFull, match=r"ran out of disk space writing p-Q4_K_M\.gguf .* removed"):
        pull_hub_model(hf(), tmp_path)
    assert _leftovers(small_tmpfs) == []
