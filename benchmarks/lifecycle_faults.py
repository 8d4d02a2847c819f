"""Lifecycle figures under faults: runs the fault suite (tests/faults, a real cluster on the
compressed clock GPUFLEET_TIME_SCALE=0.1) and prints what it measured:

- backend SIGKILL: kill → ERROR, ERROR → restart begun, kill → RUNNING again;
- backend hang (SIGSTOP): stop → ERROR by failed health probes, → RUNNING again;
- crash loop: the back-off schedule (stored and measured) on the compressed clock;
- node agent SIGKILL then return: kill → UNREACHABLE, kill → RUNNING again (re-adopted);
- planned node stop (SIGTERM, backends stopped with it) and start: back at once, no restart counted;
- node that never returns: kill → UNREACHABLE, kill → RUNNING on another worker after the grace;
- backend OOM-killed by the kernel (a memory cgroup limit): kill → ERROR saying OOM;
- gpufleet server SIGKILL during a deploy of 5: kill → all 5 RUNNING, no duplicate;
- Prefect server restart during a scale 1 → 3: restart → 3 RUNNING;
- 50 concurrent scale/deploy/delete calls: answered, settled, late scales refused, claims per GPU;
- disk full while pulling weights (a 256 KiB tmpfs cache): deploy → ERROR saying so;
- hub dropping the connection: resumed download → RUNNING; repeated drops → ERROR saying so;
- edit --rollout on 2 replicas: duration, fewest RUNNING seen; a failing new config stopped;
- for each fault: "lost: 0 deployments, 0 instances, 0 log runs" (the tests assert it).

    .venv/bin/python benchmarks/lifecycle_faults.py [-k EXPR]

Back-off and grace figures are on the compressed clock: multiply by 10 for production
(1 s there is 10 s in production); detection and restart latencies are not scaled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=None, help="pytest -k expression: run some faults only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "faults", "tests/faults", "-p", "no:cacheprovider"]
        if args.k:
            cmd += ["-k", args.k]
        env = {**os.environ, "GPUFLEET_FAULT_FIGURES": str(out)}
        status = subprocess.run(cmd, cwd=REPO, env=env).returncode
        figures = json.loads(out.read_text()) if out.exists() else {}
    print_figures(figures)
    return status


def print_figures(figures: dict) -> None:
    if not figures:
        print("no figures: the fault suite did not run to its end")
        return
    if (k := figures.get("backend_sigkill")) is not None:
        print(f"backend SIGKILL: ERROR after {k['kill_to_error_s']} s; restart begun {k['error_to_restart_begun_s']} s "
              f"after ERROR; RUNNING again {k['kill_to_running_s']} s after the kill; lost: {k['lost']}")
    if (h := figures.get("backend_hang")) is not None:
        print(f"backend hang (SIGSTOP; probes every {h['probe_interval_s']} s, {h['probe_failures']} failures): ERROR "
              f"after {h['sigstop_to_error_s']} s, RUNNING again {h['sigstop_to_running_s']} s after; lost: {h['lost']}")
    if (loop := figures.get("crash_loop")) is not None:
        print(f"crash loop (time scale {loop['time_scale']}):")
        for s in loop["schedule"]:
            print(f"  attempt {s['attempt']}: back-off {s['back-off_s']:g} s, restart begun "
                  f"{s['error_to_restart_begun_s']} s after the failure")
        print(f"  lost: {loop['lost']}")
    if (a := figures.get("node_agent_sigkill_and_return")) is not None:
        print(f"node agent SIGKILL then return: UNREACHABLE after {a['kill_to_unreachable_s']} s, RUNNING again "
              f"(re-adopted, same process) {a['kill_to_running_again_s']} s after the kill; lost: {a['lost']}")
    if (p := figures.get("planned_node_stop")) is not None:
        print(f"planned node stop and start: RUNNING {p['node_start_to_running_s']} s after the node was started "
              f"again, restart count {p['restart_count']}; lost: {p['lost']}")
    if (n := figures.get("node_never_returns")) is not None:
        print(f"node never returns: UNREACHABLE after {n['kill_to_unreachable_s']} s, RUNNING on another worker "
              f"{n['kill_to_rescheduled_running_s']} s after the kill (grace {n['grace_s']:g} s); lost: {n['lost']}")
    print_more_figures(figures)


def print_more_figures(figures: dict) -> None:
    """The faults of tests/faults/test_more_faults.py and test_rollout.py."""
    if (o := figures.get("backend_oom_kill")) is not None:
        print(f"backend OOM-killed by the kernel: ERROR after {o['kill_to_error_s']} s: {o['message'][:90]}…; "
              f"lost: {o['lost']}")
    if (s := figures.get("server_sigkill_during_deploy_of_5")) is not None:
        print(f"gpufleet server SIGKILL during a deploy of 5: back after {s['server_away_s']} s, all 5 RUNNING "
              f"{s['kill_to_all_running_s']} s after the kill, duplicates {s['duplicates']}; lost: {s['lost']}")
    if (p := figures.get("prefect_restart_during_scale")) is not None:
        print(f"Prefect restart during a scale 1 → 3: Prefect away {p['prefect_away_s']} s, 3 RUNNING "
              f"{p['restart_to_3_running_s']} s after the restart began; lost: {p['lost']}")
    if (c := figures.get("concurrent_50_calls")) is not None:
        print(f"50 concurrent scale/deploy/delete calls: answered in {c['answered_s']} s, settled after "
              f"{c['settled_s']} s at {c['final_replicas']} replicas (the latest-issued scale; "
              f"{c['refused_as_late_412']} late scales refused), VRAM claimed per 1 GiB GPU "
              f"{c['fg_vram_claimed_mib']} MiB; lost: {c['lost']}")
    if (d := figures.get("disk_full_while_pulling")) is not None:
        print(f"disk full while pulling weights: ERROR {d['deploy_to_error_s']} s after the deploy, "
              f"{d['half_written_files']} half-written files; lost: {d['lost']}")
    if (h := figures.get("hub_drops_connection")) is not None:
        print(f"hub drops the connection: resumed from byte {h['resumed_from_byte']}, RUNNING "
              f"{h['deploy_to_running_with_one_drop_s']} s after the deploy; every download cut: "
              f"{h['every_download_cut'][:70]}…; lost: {h['lost']}")
    if (r := figures.get("rollout")) is not None:
        print(f"edit --rollout on {r['replicas']} replicas: done in {r['rollout_s']} s, fewest RUNNING seen "
              f"{r['fewest_running_during']}; a failing new configuration stopped after "
              f"{r['failed_rollout_stopped_after_s']} s with {r['fewest_running_during_failed']} still RUNNING; "
              f"lost: {r['lost']}")


if __name__ == "__main__":
    sys.exit(main())
