"""What a waiting CLI command says: states per instance, PENDING with its reason per worker,
downloads as a bar, and on timeout what to try."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import typer

from gpufleet.cli.wait import describe, positive_timeout, summary, what_to_try
from gpufleet.core.schemas import DeploymentConfig, InstanceView, ModelSource


def inst(i: int, state: str, message: str = "", deleting: bool = False) -> InstanceView:
    now = datetime.now(timezone.utc)
    return InstanceView(id=i, name=f"chat-{i}", deployment="chat", state=state, state_message=message,
                        deleting=deleting, created_at=now, updated_at=now,
                        config=DeploymentConfig(source=ModelSource(kind="local_path", local_path="/m.gguf")))


PENDING = "cannot be placed: node-a: labels do not match gpu=a100; node-b: labels do not match gpu=a100"


def test_each_instance_in_words() -> None:
    assert describe(inst(1, "PENDING", PENDING)) == f"chat-1: PENDING: {PENDING}"
    assert describe(inst(2, "DOWNLOADING", "DOWNLOADING 42 % (1.2 GiB of 2.9 GiB, 85 MiB/s)")) == (
        "chat-2: downloading ████████░░░░░░░░░░░░ 42 % (1.2 GiB of 2.9 GiB, 85 MiB/s)")
    assert describe(inst(3, "ERROR", "llama-server exited with 1\nlast lines…")) == "chat-3: ERROR: llama-server exited with 1"
    assert describe(inst(4, "STARTING", "loading")) == "chat-4: STARTING"
    assert summary([inst(1, "RUNNING"), inst(5, "RUNNING", deleting=True)]) == "chat-1: RUNNING; 1 removing"


def test_what_to_try_follows_what_the_instances_do() -> None:
    said = what_to_try("chat", [inst(1, "PENDING", PENDING)])
    assert "gpufleet plan" in said and "gpufleet workers" in said and "gpufleet scale chat N" in said
    said = what_to_try("chat", [inst(2, "DOWNLOADING", "DOWNLOADING 5 %")])
    assert "download goes on" in said and "gpufleet plan" not in said
    assert "gpufleet logs 4 --tail 50" in what_to_try("chat", [inst(4, "STARTING")])
    assert "gpufleet ps chat" in what_to_try("chat", [])


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan")])
def test_timeouts_of_zero_or_less_are_refused(bad: float) -> None:
    with pytest.raises(typer.BadParameter, match="must be more than 0 seconds"):
        positive_timeout(bad)
    assert positive_timeout(0.5) == 0.5 and positive_timeout(None) is None
