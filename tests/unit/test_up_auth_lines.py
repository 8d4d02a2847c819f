"""What `gpufleet up` says about authentication: the admin key only when it was just created
(shown once), how to use it, and a loud line when authentication is off."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from gpufleet.cli.up_run import _auth_lines


def test_new_key_is_shown_once_then_only_where_it_is(tmp_path: Path) -> None:
    cluster = SimpleNamespace(api_key="gf_abcdefgh_" + "s" * 43, new_admin_key=True, api_url="http://127.0.0.1:1")
    first = _auth_lines(cluster, tmp_path)
    assert f"admin API key (shown once): {cluster.api_key}" in first and str(tmp_path / "credentials") in first
    again = _auth_lines(SimpleNamespace(**{**vars(cluster), "new_admin_key": False}), tmp_path)
    assert cluster.api_key not in again and "gpufleet keys create" in again


def test_auth_off_is_said_loudly(tmp_path: Path) -> None:
    said = _auth_lines(SimpleNamespace(api_key=None, new_admin_key=False, api_url="x"), tmp_path)
    assert "authentication is OFF" in said and "single-user laptop" in said
