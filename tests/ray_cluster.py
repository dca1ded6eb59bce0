"""A real Ray cluster for the tests: a head and worker nodes started as separate `ray start`
processes on loopback, in a temporary directory, always stopped (and their processes killed by
that directory) at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

# Quicker failure detection: a killed node is declared dead in about 10 s instead of about 30 s. Not
# quicker than that: with three misses (3 s) a raylet starved of CPU while the other test worker
# loaded both cores was declared dead, and its runs waited for the division's nodes to come back.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "10",
                      "RAY_health_check_initial_delay_ms": "1000", "RAY_USAGE_STATS_ENABLED": "0"}
OBJECT_STORE_BYTES = str(100 * 2**20)  # the PTB ids are 4 MB; the default would reserve a third of RAM


class RayClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_binary() -> str:
    found = shutil.which("ray")
    if found is None:
        raise RayClusterError("the `ray` command is not installed: pip install -e '.[ray]'")
    return found


class RayCluster:
    def __init__(self) -> None:
        # Short: Ray's Unix sockets live under it and socket paths are limited to ~100 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **FAST_HEALTH_CHECKS}

    def _ray(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([ray_binary(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RayClusterError(f"ray {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def start_head(self, resources: dict[str, float], cpus: int = 1) -> None:
        self._ray("start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                  f"--resources={json.dumps(resources)}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
                  f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats")

    def add_node(self, resources: dict[str, float], cpus: int = 1) -> None:
        """Another node on this machine, a separate raylet; its resources tell it apart from the others."""
        self._ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                  f"--resources={json.dumps(resources)}", f"--object-store-memory={OBJECT_STORE_BYTES}",
                  "--disable-usage-stats")

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        """Until `count` nodes are alive (a node is usable once the head lists it)."""
        script = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                  "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        alive = -1
        while time.monotonic() < deadline:
            done = subprocess.run([shutil.which("python") or "python", "-c", script, self.address], env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
            if done.returncode == 0 and done.stdout.strip().isdigit():
                alive = int(done.stdout.strip())
                if alive == count:
                    return
            time.sleep(1)
        raise RayClusterError(f"{alive} node(s) of {count} alive after {timeout:.0f} s")

    def raylets(self, resource: str) -> list[psutil.Process]:
        """The raylet processes of the nodes that declare `resource`."""
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(process.info.get("cmdline") or [])
            if "raylet" in (process.info.get("name") or "") and resource in cmdline and str(self.temp_dir) in cmdline:
                found.append(process)
        return found

    def running_tasks(self) -> list[int]:
        """Pids of Ray workers executing a run (Ray names the process after the task)."""
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if "ray::_run_on_node" in " ".join(p.info.get("cmdline") or [])]

    def kill_node(self, resource: str) -> int:
        """SIGKILL the raylet of the node(s) declaring `resource` (the node dies; its workers follow)."""
        raylets = self.raylets(resource)
        for raylet in raylets:
            raylet.send_signal(signal.SIGKILL)
        return len(raylets)

    def stop(self) -> None:
        try:
            subprocess.run([ray_binary(), "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        finally:
            marker = str(self.temp_dir)
            for process in psutil.process_iter(["cmdline"]):
                try:
                    if marker in " ".join(process.info.get("cmdline") or []):
                        process.kill()
                except psutil.Error:
                    pass
            shutil.rmtree(self.temp_dir, ignore_errors=True)
