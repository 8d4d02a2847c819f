"""Where `gpufleet up` keeps Prefect's PostgreSQL data, and when it is removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpufleet.cli import prefect_postgres as pp


@pytest.fixture
def root_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pp, "ROOT_DATA", tmp_path / "var")
    return tmp_path / "var"


def make(root_data: Path, home: Path, pid: int | None = None) -> Path:
    base = pp.root_data_dir(home)
    (base / "data").mkdir(parents=True)
    (base / pp.HOME_FILE).write_text(str(home))
    if pid is not None:
        (base / "data" / "postmaster.pid").write_text(f"{pid}\n/some/dir\n")
    return base


def test_data_of_deleted_homes_is_pruned_unless_its_server_runs(root_data: Path, tmp_path: Path) -> None:
    live_home = tmp_path / "live"
    live_home.mkdir()
    kept = make(root_data, live_home)
    gone = make(root_data, tmp_path / "deleted-1")
    running = make(root_data, tmp_path / "deleted-2", pid=os.getpid())  # a live process holds it
    stale = make(root_data, tmp_path / "deleted-3", pid=2**22 + 7)  # no such process
    binaries = root_data / "bin-0123456789ab"
    binaries.mkdir()
    assert sorted(pp.prune_orphans()) == sorted([gone, stale])
    assert kept.exists() and running.exists() and binaries.exists()


def test_discard_removes_a_stopped_home_only(root_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "h"
    base = make(root_data, home, pid=os.getpid())
    pp.discard(home)
    assert base.exists()  # its server runs
    (base / "data" / "postmaster.pid").unlink()
    pp.discard(home)
    assert not base.exists()


@pytest.mark.parametrize(("value", "wanted"), [(None, True), ("postgres", True), ("SQLite", False)])
def test_choice(value: str | None, wanted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv(pp.CHOICE_ENV, raising=False)
    else:
        monkeypatch.setenv(pp.CHOICE_ENV, value)
    assert pp.wanted() is wanted


def test_a_bad_choice_says_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pp.CHOICE_ENV, "mysql")
    with pytest.raises(pp.EmbeddedPostgresError, match="must be 'postgres' or 'sqlite', not 'mysql'"):
        pp.wanted()
