"""What the gateway adds to a request, in one run, direct vs through a `gpufleet gateway` process:

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--skip-llama]

1. against a stub upstream that answers instantly (a raw asyncio HTTP server returning a fixed
   chat completion), so the gateway's own cost is what is measured:
   - added latency p50 / p99 at concurrency 1 (goals: < 0.5 ms / < 1 ms), the median of
     alternating direct and gateway blocks, so drift on a shared machine hits both alike;
   - throughput at 32 and 256 concurrent requests, gateway / direct (goal: ≥ 95 %): ``--runs``
     alternating pairs of runs (default 5), each gateway run divided by the direct run just
     before it, and the median of those ratios printed with their spread — on a shared
     machine a slow spell then spoils one pair, not the figure;
2. against a real llama.cpp server (the tiny model, max_tokens 4): the same figures.

The gateway is the real one (gpufleet.gateway.standalone served as `gpufleet gateway` serves it,
by gpufleet.gateway.front; ``--uvicorn`` also measures the same app under uvicorn, as gateway
processes were served before, in the same run), its routing table
read from a stand-in of the server's /v1/gateway/routes served by the stub), in its own
process; the stub and llama.cpp in theirs; the load generator (aiohttp) in this one. On a
small machine all of them share the same cores, so the gateway's CPU comes out of the
backend's and the client's: the throughput ratio against the instant stub measures that
contention as much as the gateway; against llama.cpp the backend is the bottleneck.

``--pin`` puts the load generator on CPU 0 and every server on the others. Unpinned, the
scheduler moves the load generator, the backend and the gateway between the two cores, and the
gateway's CPU comes partly out of the load generator's, which sets the direct throughput;
pinned, it comes out of the backend's core only, as when the callers are other machines.
Both are worth reading: the unpinned figure is the harsher.

``--floors`` measures, in the same run and against the same stub, two proxies that do less than
any HTTP gateway can, to show what the machine allows: a TCP relay in Python (asyncio, one
upstream connection per caller connection, bytes passed on without parsing: two reads and two
writes per request, the least any proxy in Python does) and nginx (C, a keepalive pool to the
stub, one worker process; `apt-get install nginx-light`). If they too stay far under 95 % of
direct throughput, the goal cannot be met on this machine by any gateway sharing its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the llama.cpp server and a free port

from tests.support.servers import free_port  # noqa: E402

STUB = r'''
import asyncio, json, sys
port = int(sys.argv[1])
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
TABLE = json.dumps({"deployments": [{"name": "stub", "replicas": 1, "deleting": False, "created": 0,
    "ready": [{"instance": 1, "name": "stub-1", "deployment": "stub", "worker": "w",
               "url": f"http://127.0.0.1:{port}"}]}, {"name": "llama", "replicas": 1, "deleting": False,
    "created": 0, "ready": [{"instance": 2, "name": "llama-1", "deployment": "llama", "worker": "w",
               "url": "http://127.0.0.1:" + sys.argv[2]}]}]}).encode()

WHOAMI = json.dumps({"name": "bench", "role": "admin", "models": [], "worker": None}).encode()

def answer(body):
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

class Stub(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            n = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            if len(rest) < n:
                return
            self.buf = rest[n:]
            if head.startswith(b"GET /v1/gateway/routes"):
                self.t.write(answer(TABLE))
            elif head.startswith(b"GET /v1/whoami"):  # the gateway checks a caller's key once per 5 s
                self.t.write(answer(WHOAMI))
            else:
                self.t.write(answer(BODY))

async def main():
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
'''

GATEWAY = r'''
import sys
from gpufleet.gateway.standalone import create_gateway_app
app = create_gateway_app(sys.argv[1])
if sys.argv[3] == "front":
    from gpufleet.gateway.front import run
    run(app, "127.0.0.1", int(sys.argv[2]))
else:
    import uvicorn
    _, http, loop = sys.argv[3].split(":")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False, http=http,
                loop=loop, backlog=4096)
'''


#: the least a proxy in Python can do: relay bytes between the caller's connection and one upstream
#: connection of its own, no parsing, no routing (a floor, not a gateway)
RELAY = r'''
import asyncio, sys
upstream_port, port = int(sys.argv[1]), int(sys.argv[2])

class Pipe(asyncio.Protocol):
    peer = None
    def __init__(self):
        self.pending = []
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)
    def connection_lost(self, exc):
        if self.peer is not None:
            self.peer.transport.close()

class Caller(Pipe):
    def connection_made(self, transport):
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.link())
    async def link(self):
        _, up = await asyncio.get_running_loop().create_connection(Pipe, "127.0.0.1", upstream_port)
        up.peer, self.peer = self, up
        for data in self.pending:
            up.transport.write(data)

async def main():
    server = await asyncio.get_running_loop().create_server(Caller, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
'''

#: nginx as a reverse proxy with a keepalive pool to the stub (one worker: one process, like the gateway)
NGINX_CONF = """{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream stub {{ server 127.0.0.1:{upstream}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://stub; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


#: the gateway inside the gpufleet server (its app, middlewares and /metrics counter included), its
#: database saying that the stub is the RUNNING replica of deployment "stub"
IN_SERVER = r'''
import sys, time, tempfile
from pathlib import Path
from types import SimpleNamespace
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from tests.support.gateway import start_gateway_server
tmp = Path(tempfile.mkdtemp())
server = start_gateway_server(tmp, write_tiny_llama_gguf(tmp / "tiny.gguf"), port=int(sys.argv[2]))
Path(sys.argv[3]).write_text(server.admin_key)
[iid] = server.deploy("stub", 1)
server.run(iid, SimpleNamespace(port=int(sys.argv[1])))
while True:
    time.sleep(3600)
'''


#: alternating direct/gateway throughput runs per concurrency (--runs)
RUNS = 5

#: every request's headers: a key (the stub's stand-in of the server accepts any; the gateway inside
#: the server gets a real admin key, set below)
HEADERS = {"content-type": "application/json", "authorization": "Bearer gf_bench"}


def chat(model: str, max_tokens: int) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}],
                       "max_tokens": max_tokens}).encode()


async def latencies(session: aiohttp.ClientSession, url: str, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=HEADERS) as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
        out.append(time.perf_counter() - t0)
    return out


async def throughput(url: str, body: bytes, concurrency: int, total: int) -> tuple[float, int]:
    """(successful requests per second, failed requests) with ``concurrency`` clients at once."""
    connector = aiohttp.TCPConnector(limit=0)
    failed = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        left = 0

        async def worker() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                try:
                    async with session.post(url, data=body, headers=HEADERS) as r:
                        await r.read()
                        failed += r.status != 200
                except aiohttp.ClientError:
                    failed += 1

        # open every connection first (two requests on each), so what is measured is the steady
        # state of ``concurrency`` kept-alive callers, not 256 TCP handshakes through the proxy
        left = 2 * concurrency
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        left, failed = total, 0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (total - failed) / (time.perf_counter() - t0), failed


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(name: str, direct: str, gateway: str, model: str, max_tokens: int, n: int,
                  throughput_total: int, proxy_pid: int | None = None) -> dict[str, float]:
    """``proxy_pid``: the process behind ``gateway``, whose CPU time per request is printed
    (the figure least disturbed by a noisy machine: what the proxy itself costs)."""
    body = chat(model, max_tokens)
    d_lat: list[float] = []
    g_lat: list[float] = []
    async with aiohttp.ClientSession() as session:
        await latencies(session, direct, body, 20)
        await latencies(session, gateway, body, 20)
        block = max(10, n // 10)
        for _ in range(max(1, n // block)):  # alternate blocks: drift hits both alike
            d_lat += await latencies(session, direct, body, block)
            g_lat += await latencies(session, gateway, body, block)
    row = {"p50_direct_ms": pct(d_lat, 50) * 1e3, "p50_gateway_ms": pct(g_lat, 50) * 1e3,
           "p99_direct_ms": pct(d_lat, 99) * 1e3, "p99_gateway_ms": pct(g_lat, 99) * 1e3}
    row["added_p50_ms"] = row["p50_gateway_ms"] - row["p50_direct_ms"]
    row["added_p99_ms"] = row["p99_gateway_ms"] - row["p99_direct_ms"]
    for c in (32, 256):
        runs_d, runs_g, cpu = [], [], []
        for _ in range(RUNS):  # alternate: drift hits both alike
            runs_d.append(await throughput(direct, body, c, throughput_total))
            before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
            runs_g.append(await throughput(gateway, body, c, throughput_total))
            if proxy_pid:  # the connections' warm-up requests (2 per caller) are counted too
                cpu.append((cpu_seconds(proxy_pid) - before) / (throughput_total + 2 * c))
        if cpu:
            row[f"proxy_cpu_us_{c}"] = statistics.median(cpu) * 1e6
        # each gateway run against the direct run just before it, then the median of those ratios:
        # a slow spell of the machine hits a pair, not the whole figure
        ratios = sorted(g / d for (g, _), (d, _) in zip(runs_g, runs_d))
        row[f"rps_direct_{c}"] = statistics.median(r for r, _ in runs_d)
        row[f"rps_gateway_{c}"] = statistics.median(r for r, _ in runs_g)
        row[f"ratio_{c}"] = statistics.median(ratios)
        row[f"ratio_min_{c}"], row[f"ratio_max_{c}"] = ratios[0], ratios[-1]
        row[f"failed_direct_{c}"] = sum(f for _, f in runs_d)
        row[f"failed_gateway_{c}"] = sum(f for _, f in runs_g)
    print(f"\n{name}  (concurrency 1: {len(d_lat)} requests each way; throughput: {RUNS} alternating pairs of "
          f"runs of {throughput_total}, the median of the pairs' ratios)")
    print(f"  latency c=1   direct p50 {row['p50_direct_ms']:.3f} ms  p99 {row['p99_direct_ms']:.3f} ms | "
          f"gateway p50 {row['p50_gateway_ms']:.3f} ms  p99 {row['p99_gateway_ms']:.3f} ms")
    print(f"  added         p50 {row['added_p50_ms']:+.3f} ms (goal < 0.5)   p99 {row['added_p99_ms']:+.3f} ms "
          f"(goal < 1)")
    for c in (32, 256):
        cpu_note = (f"  [its CPU: {row[f'proxy_cpu_us_{c}']:.0f} us/request]" if f"proxy_cpu_us_{c}" in row else "")
        print(f"  throughput c={c:<3} direct {row[f'rps_direct_{c}']:8.0f} req/s  gateway "
              f"{row[f'rps_gateway_{c}']:8.0f} req/s  ratio {row[f'ratio_{c}']:.1%} (goal >= 95 %; pairs "
              f"{row[f'ratio_min_{c}']:.0%}–{row[f'ratio_max_{c}']:.0%}){cpu_note}"
              + (f"  failed: direct {row[f'failed_direct_{c}']:.0f}, gateway {row[f'failed_gateway_{c}']:.0f}"
                 if row[f"failed_direct_{c}"] or row[f"failed_gateway_{c}"] else ""))
    return row


#: the CPUs this benchmark may use, read before --pin narrows its own
ALL_CPUS = sorted(os.sched_getaffinity(0))


def pin(enabled: bool) -> None:
    """With --pin: this process (the load generator) on CPU 0, its child processes and theirs
    (stub, llama.cpp, gateway, floors, nginx's worker) on the other CPUs."""
    if not enabled:
        return
    cpus = ALL_CPUS
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    ours, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - ours
        ours |= frontier
    for pid in ours:
        try:
            os.sched_setaffinity(pid, cpus[1:])
        except OSError:
            pass
    os.sched_setaffinity(0, cpus[:1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} in {timeout} s")


def start_floors(stub_port: int, tmp: Path, env: dict[str, str]) -> list[tuple[str, int, subprocess.Popen[bytes]]]:
    """The two floor proxies in front of the stub: (name, port, process)."""
    relay_port = free_port()
    relay = subprocess.Popen([sys.executable, "-c", RELAY, str(stub_port), str(relay_port)], env=env)
    wait_port(relay_port, relay, "TCP relay")
    floors = [("TCP relay in Python (asyncio, no parsing)", relay_port, relay)]
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        print("nginx not found (apt-get install nginx-light): its floor is not measured")
        return floors
    nginx_port = free_port()
    conf = tmp / "nginx.conf"
    user = "user root root;" if os.geteuid() == 0 else ""  # its worker reads the 0700 temporary directory
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, upstream=stub_port, port=nginx_port))
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")])
    wait_port(nginx_port, proc, "nginx")
    return [*floors, ("nginx 1 worker (C, keepalive pool)", nginx_port, proc)]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} in {timeout} s")


def main() -> None:
    global RUNS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="requests at concurrency 1, each way")
    ap.add_argument("--throughput-requests", type=int, default=15000, help="requests per throughput run (at 12,000 a second a run lasts about a second)")
    ap.add_argument("--llama-requests", type=int, default=300)
    ap.add_argument("--uvicorn", action="store_true", help="also measure the gateway app under uvicorn (as gateway "
                    "processes were served before gpufleet.gateway.front), beside the front in the same run")
    ap.add_argument("--http", default="auto", help="with --uvicorn: its HTTP parser (auto: httptools; h11)")
    ap.add_argument("--loop", default="uvloop", help="with --uvicorn: its event loop (uvloop, asyncio)")
    ap.add_argument("--extra-path", default="", help="prepended to the gateway's PYTHONPATH (where httptools/uvloop "
                    "are installed when the environment has neither)")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--floors", action="store_true", help="also measure a Python TCP relay and nginx in front of "
                    "the same stub: what any proxy sharing these cores can reach")
    ap.add_argument("--in-server", action="store_true", help="also measure the gateway inside the gpufleet server")
    ap.add_argument("--runs", type=int, default=RUNS, help="alternating direct/gateway throughput runs (pairs)")
    ap.add_argument("--pin", action="store_true", help="the load generator on CPU 0, every server (stub, llama.cpp, "
                    "gateway, floors) on the others: the gateway's cost then comes out of the backend's core, "
                    "not the load generator's, as when callers are other machines")
    args = ap.parse_args()
    RUNS = args.runs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (args.extra_path, str(ROOT)) if p)}
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    try:
        llama_port = free_port()
        if not args.skip_llama:
            from tests.support.gateway import LlamaServer
            from gpufleet.demo.tiny_model import write_tiny_llama_gguf
            llama = LlamaServer.start(write_tiny_llama_gguf(tmp / "tiny.gguf"), tmp, ctx=512, parallel=4)
            procs.append(llama.proc)
            llama_port = llama.port
        stub_port, gw_port = free_port(), free_port()
        stub = subprocess.Popen([sys.executable, "-c", STUB, str(stub_port), str(llama_port)], env=env)
        procs.append(stub)
        gw = subprocess.Popen([sys.executable, "-c", GATEWAY, f"http://127.0.0.1:{stub_port}", str(gw_port),
                               "front"], env=env)
        procs.append(gw)
        wait_http(f"http://127.0.0.1:{gw_port}/health", gw, "gateway")
        print(f"gateway: gpufleet.gateway.standalone served by gpufleet.gateway.front, one process; "
              f"{os.cpu_count()} CPUs shared by stub/llama.cpp, gateway and client")
        direct = f"http://127.0.0.1:{stub_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        pin(args.pin)
        asyncio.run(measure("instant stub upstream, gpufleet gateway process", direct, through, "stub", 4,
                            args.requests, args.throughput_requests, gw.pid))
        if args.uvicorn:
            uv_port = free_port()
            uv = subprocess.Popen([sys.executable, "-c", GATEWAY, f"http://127.0.0.1:{stub_port}", str(uv_port),
                                   f"uvicorn:{args.http}:{args.loop}"], env=env)
            procs.append(uv)
            wait_http(f"http://127.0.0.1:{uv_port}/health", uv, "gateway under uvicorn")
            pin(args.pin)
            asyncio.run(measure(f"instant stub upstream, the same gateway app under uvicorn (http={args.http}, "
                                f"loop={args.loop})", direct, f"http://127.0.0.1:{uv_port}/v1/chat/completions",
                                "stub", 4, args.requests, args.throughput_requests, uv.pid))
        if args.floors:
            for name, port, proc in start_floors(stub_port, tmp, env):
                procs.append(proc)
                pin(args.pin)
                asyncio.run(measure(f"instant stub upstream, floor: {name}", direct,
                                    f"http://127.0.0.1:{port}/v1/chat/completions", "stub", 4, args.requests,
                                    args.throughput_requests,
                                    None if name.startswith("nginx") else proc.pid))  # nginx serves from a child
        if args.in_server:
            srv_port = free_port()
            key_file = tmp / "admin-key"
            srv = subprocess.Popen([sys.executable, "-c", IN_SERVER, str(stub_port), str(srv_port), str(key_file)],
                                   env=env)
            procs.append(srv)
            wait_http(f"http://127.0.0.1:{srv_port}/v1/health", srv, "gpufleet server")
            while not key_file.exists() or not key_file.read_text():  # written just after it starts serving
                time.sleep(0.05)
            HEADERS["authorization"] = f"Bearer {key_file.read_text()}"
            pin(args.pin)
            asyncio.run(measure("instant stub upstream, the gateway inside the gpufleet server", direct,
                                f"http://127.0.0.1:{srv_port}/v1/chat/completions", "stub", 4, args.requests,
                                args.throughput_requests, srv.pid))
        if not args.skip_llama:
            pin(args.pin)
            asyncio.run(measure("real llama.cpp (tiny model, max_tokens 4, 4 slots)",
                                f"http://127.0.0.1:{llama_port}/v1/chat/completions", through, "llama", 4,
                                args.llama_requests, max(256, args.throughput_requests // 5)))
    finally:
        for p in procs:
            p.terminate()  # nginx's master stops its worker on SIGTERM (a SIGKILL would orphan it)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
