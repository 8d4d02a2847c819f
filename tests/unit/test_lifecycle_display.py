"""What users see of the restart schedule, and the settings that compress its clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpufleet.cli.output import restarts_note
from gpufleet.core.schemas import DeploymentConfig, InstanceView, ModelSource
from gpufleet.core.states import InstanceState as S
from gpufleet.settings import plan_timing

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def view(state: S, restarts: int, due_in: float | None = None, looping: bool = False) -> InstanceView:
    return InstanceView(id=1, name="m-1", deployment="m", state=state, restart_count=restarts, crash_looping=looping,
                        next_restart_at=NOW + timedelta(seconds=due_in) if due_in is not None else None,
                        config=DeploymentConfig(source=ModelSource(local_path="/m.gguf")), created_at=NOW,
                        updated_at=NOW)


@pytest.mark.parametrize(
    ("inst", "shown"),
    [
        (view(S.RUNNING, 0), "0"),
        (view(S.ERROR, 3, due_in=40, looping=True), "3, crash-looping, restarting in 40 s, attempt 4"),
        (view(S.ERROR, 0, due_in=0), "0, restarting now, attempt 1"),
        (view(S.ERROR, 1, due_in=-5), "1, restarting now, attempt 2"),  # due already: the restart is on its way
        (view(S.STARTING, 5, looping=True), "5, crash-looping"),
        (view(S.RUNNING, 5, looping=True), "5"),  # running again: not flagged while it runs
        (view(S.ERROR, 2), "2"),  # no restart time stored (restart on error off)
    ],
)
def test_ps_restarts_column(inst: InstanceView, shown: str) -> None:
    assert restarts_note(inst, NOW) == shown


def test_plan_timing_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan_timing().restart_cap_s == 300 and plan_timing().stable_window_s == 600
    monkeypatch.setenv("GPUFLEET_TIME_SCALE", "0.01")
    monkeypatch.setenv("GPUFLEET_LOST_WORKER_GRACE", "60")
    timing = plan_timing()
    assert timing.restart_base_s == pytest.approx(0.1)  # 10 s × 0.01
    assert timing.lost_grace_s == pytest.approx(0.6)  # 60 s × 0.01
    assert timing.stable_window_s == pytest.approx(6.0)  # 600 s × 0.01


@pytest.mark.parametrize(("name", "value"), [("GPUFLEET_TIME_SCALE", "0"), ("GPUFLEET_TIME_SCALE", "fast"),
                                             ("GPUFLEET_RESTART_STABLE_WINDOW", "-1")])
def test_bad_timing_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        plan_timing()
