"""Where a node finds llama.cpp's RPC binaries: the install-dir rule (shared with
scripts/build-llama-cpp.sh), the environment overrides, and a reason that names the file."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from gpufleet.runtimes import llama_rpc
from gpufleet.runtimes.llama_rpc import (
    LLAMA_CPP_BUILD,
    install_dir,
    rpc_llama_server_executable,
    rpc_server_executable,
    rpc_unavailable_reason,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-cpp.sh"
ENV_VARS = (
    "GPUFLEET_LLAMA_CPP_HOME",
    "XDG_CACHE_HOME",
    "GPUFLEET_RPC_SERVER",
    "GPUFLEET_RPC_LLAMA_SERVER",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No override leaks in from the machine, HOME is a scratch dir and PATH has no rpc-server,
    so each test sees only what it sets up."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", f"{empty_bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
    for name in ("rpc-server", "ggml-rpc-server"):
        assert not any(
            (Path(d) / name).exists() for d in ("/usr/bin", "/bin")
        ), f"{name} in /usr/bin or /bin would make these tests meaningless"


def make_executable(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def install_both(home: Path) -> tuple[Path, Path]:
    return (
        make_executable(home / "bin" / "llama-server"),
        make_executable(home / "bin" / "rpc-server"),
    )


def script_dir(env_updates: dict[str, str]) -> Path:
    """What the build script itself says, under the same environment as the test process."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(env_updates)
    out = subprocess.run(
        ["bash", str(SCRIPT), "--print-dir"], env=env, capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


# --- install dir rule --------------------------------------------------------------------------


def test_default_install_dir_is_under_home_cache(tmp_path: Path) -> None:
    assert install_dir() == tmp_path / "home" / ".cache" / "gpufleet" / f"llama.cpp-{LLAMA_CPP_BUILD}"


def test_xdg_cache_home_moves_the_install_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert install_dir() == tmp_path / "xdg" / "gpufleet" / "llama.cpp-b11434"


def test_empty_xdg_cache_home_counts_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert install_dir() == tmp_path / "home" / ".cache" / "gpufleet" / "llama.cpp-b11434"


def test_gpufleet_llama_cpp_home_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "mine"))
    assert install_dir() == tmp_path / "mine"


@pytest.mark.parametrize(
    "updates",
    [
        {},
        {"XDG_CACHE_HOME": "/srv/cache"},
        {"XDG_CACHE_HOME": ""},
        {"XDG_CACHE_HOME": "/srv/cache", "GPUFLEET_LLAMA_CPP_HOME": "/opt/llama"},
    ],
    ids=["default", "xdg", "empty-xdg", "override"],
)
def test_script_and_module_agree_on_the_install_dir(
    monkeypatch: pytest.MonkeyPatch, updates: dict[str, str]
) -> None:
    for name, value in updates.items():
        monkeypatch.setenv(name, value)
    assert script_dir(updates) == install_dir()


def test_build_number_matches_the_script() -> None:
    assert f'readonly LLAMA_CPP_BUILD="{LLAMA_CPP_BUILD}"' in SCRIPT.read_text()


# --- lookup ------------------------------------------------------------------------------------


def test_nothing_installed_means_none() -> None:
    assert rpc_server_executable() is None
    assert rpc_llama_server_executable() is None


def test_built_binaries_are_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    llama, rpc = install_both(tmp_path / "llama")
    assert rpc_server_executable() == [str(rpc)]
    assert rpc_llama_server_executable() == [str(llama)]
    assert rpc_unavailable_reason() is None


def test_env_overrides_win_over_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    install_both(tmp_path / "llama")
    rpc = make_executable(tmp_path / "other" / "my-rpc")
    llama = make_executable(tmp_path / "other" / "my-llama")
    monkeypatch.setenv("GPUFLEET_RPC_SERVER", str(rpc))
    monkeypatch.setenv("GPUFLEET_RPC_LLAMA_SERVER", str(llama))
    assert rpc_server_executable() == [str(rpc)]
    assert rpc_llama_server_executable() == [str(llama)]
    assert rpc_unavailable_reason() is None


def test_bare_override_name_is_looked_up_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = make_executable(tmp_path / "empty-bin" / "custom-rpc")
    monkeypatch.setenv("GPUFLEET_RPC_SERVER", "custom-rpc")
    assert rpc_server_executable() == [str(found)]


@pytest.mark.parametrize("name", ["rpc-server", "ggml-rpc-server"])
def test_rpc_server_falls_back_to_path(tmp_path: Path, name: str) -> None:
    on_path = make_executable(tmp_path / "empty-bin" / name)
    assert rpc_server_executable() == [str(on_path)]


def test_llama_server_on_path_is_not_trusted_for_rpc(tmp_path: Path) -> None:
    make_executable(tmp_path / "empty-bin" / "llama-server")
    assert rpc_llama_server_executable() is None
    reason = rpc_unavailable_reason()
    assert reason is not None and "llama-server" in reason


# --- reasons -----------------------------------------------------------------------------------


def test_reason_names_both_missing_files_and_the_fix(tmp_path: Path) -> None:
    reason = rpc_unavailable_reason()
    assert reason is not None
    base = install_dir() / "bin"
    assert str(base / "rpc-server") in reason
    assert str(base / "llama-server") in reason
    assert "scripts/build-llama-cpp.sh" in reason
    assert "GPUFLEET_RPC_SERVER" in reason and "GPUFLEET_RPC_LLAMA_SERVER" in reason


def test_reason_names_only_the_missing_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    make_executable(tmp_path / "llama" / "bin" / "rpc-server")
    reason = rpc_unavailable_reason()
    assert reason is not None
    assert str(tmp_path / "llama" / "bin" / "llama-server") in reason
    assert "bin/rpc-server" not in reason


def test_reason_names_a_missing_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    install_both(tmp_path / "llama")
    missing = tmp_path / "nowhere" / "rpc-server"
    monkeypatch.setenv("GPUFLEET_RPC_SERVER", str(missing))
    assert rpc_server_executable() == [str(missing)]  # the override is kept, to be named
    reason = rpc_unavailable_reason()
    assert reason is not None
    assert f"GPUFLEET_RPC_SERVER={missing} does not exist" in reason


def test_reason_names_a_non_executable_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    install_both(tmp_path / "llama")
    plain = make_executable(tmp_path / "other" / "llama-server", mode=0o644)
    monkeypatch.setenv("GPUFLEET_RPC_LLAMA_SERVER", str(plain))
    reason = rpc_unavailable_reason()
    assert reason is not None
    assert f"GPUFLEET_RPC_LLAMA_SERVER={plain} is not an executable file" in reason


def test_reason_names_a_non_executable_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    make_executable(tmp_path / "llama" / "bin" / "llama-server")
    plain = make_executable(tmp_path / "llama" / "bin" / "rpc-server", mode=0o644)
    assert rpc_server_executable() is None
    reason = rpc_unavailable_reason()
    assert reason is not None
    assert f"{plain} is not an executable file" in reason


def test_a_directory_is_not_an_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUFLEET_LLAMA_CPP_HOME", str(tmp_path / "llama"))
    install_both(tmp_path / "llama")
    monkeypatch.setenv("GPUFLEET_RPC_SERVER", str(tmp_path))
    reason = rpc_unavailable_reason()
    assert reason is not None and "is not an executable file" in reason


def test_module_runs_nothing_at_import() -> None:
    source = Path(llama_rpc.__file__).read_text()
    assert "subprocess" not in source


# --- the build script's idempotence and lock (no build: the install is faked) ----------------


def run_script(home: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLEET_LLAMA_CPP_HOME": str(home)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def fake_install(home: Path) -> None:
    """Both binaries and the stamp the script itself says a reusable install has."""
    install_both(home)
    stamp = run_script(home, "--print-stamp").stdout
    (home / "BUILD_INFO").write_text(stamp + "built=2026-01-01T00:00:00Z\n")


def test_matching_install_is_reused_without_building(tmp_path: Path) -> None:
    home = tmp_path / "llama"
    fake_install(home)
    result = run_script(home, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stderr
    assert not Path(f"{home}.log").exists()  # nothing downloaded or built


def test_stamp_names_build_sdist_and_flags(tmp_path: Path) -> None:
    stamp = run_script(tmp_path / "llama", "--print-stamp").stdout
    assert f"build={LLAMA_CPP_BUILD}\n" in stamp
    assert "sdist_sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45\n" in stamp
    assert "-DGGML_RPC=ON" in stamp and "-DBUILD_SHARED_LIBS=OFF" in stamp


def test_second_caller_waits_on_the_lock_then_reuses_the_build(tmp_path: Path) -> None:
    """While one caller holds the lock (a build in progress), another blocks; when the first
    installs and releases it, the second finds the install and exits 0 without building."""
    home = tmp_path / "llama"
    home.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GPUFLEET_LLAMA_CPP_HOME": str(home)}
    with open(f"{home}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = subprocess.Popen(
            ["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                waiter.wait(timeout=1.5)
            fake_install(home)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        _, stderr = waiter.communicate(timeout=10)
    assert waiter.returncode == 0, stderr
    assert "waiting for it" in stderr and "already installed" in stderr
    assert not Path(f"{home}.log").exists()
