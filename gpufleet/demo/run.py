"""The demo job of `gpufleet up --demo`: generate a tiny model, deploy it, chat with it."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from gpufleet.client import ApiError, GpufleetClient
from gpufleet.cli.wait import wait_for_deployment
from gpufleet.core.schemas import DeploymentSpec, ModelSource
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.settings import home

DEMO_NAME = "tiny"


def run_demo(say: Callable[[str], None]) -> str:
    path = home() / "models" / "tiny-llama.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_llama_gguf(path)
        say(f"wrote a tiny random-weight llama model to {path}")
    with GpufleetClient() as c:
        try:
            c.get_deployment(DEMO_NAME)
        except ApiError:
            spec = DeploymentSpec(name=DEMO_NAME, replicas=1,
                                  source=ModelSource(kind="local_path", local_path=str(path)))
            c.create_deployment(spec)
            say(f"deploying {DEMO_NAME} from {path}")
        instances = wait_for_deployment(c, DEMO_NAME, timeout=300)
    inst = instances[0]
    resp = httpx.post(
        f"http://127.0.0.1:{inst.port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16},
        timeout=60,
    )
    resp.raise_for_status()
    answer = resp.json()["choices"][0]["message"]["content"]
    say(f"{DEMO_NAME} is answering on http://127.0.0.1:{inst.port}/v1/chat/completions "
        f"(random weights, so the words are noise): {answer!r}")
    return answer
