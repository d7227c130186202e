"""Load-generation plumbing for bench/gateway.py: ports, wrk, the LiteLLM venv, child processes.

Kept apart so the bench script reads as the experiment; nothing here knows about Thawline.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".bench"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


# ---- tools -------------------------------------------------------------------------------
def ensure_wrk() -> str:
    w = shutil.which("wrk")
    if w:
        return w
    print("installing wrk (apt-get)...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, timeout=300,
                   stdout=subprocess.DEVNULL)
    w = shutil.which("wrk")
    if not w:
        raise RuntimeError("wrk not found after apt-get install")
    return w


def ensure_litellm() -> Path:
    """LiteLLM in its own venv (it pins versions of packages the project also uses)."""
    venv = BENCH_DIR / "litellm-venv"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print("installing litellm[proxy] into .bench/litellm-venv ...", file=sys.stderr)
    BENCH_DIR.mkdir(exist_ok=True)
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True, timeout=1200)
    return exe


_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": %d, "non2xx": %d}}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_wrk(wrk: str, url: str | list[str], model: str, key: str, conc: int, duration_s: float) -> dict:
    """One bounded wrk run; with several URLs (one per ingress replica), one wrk per URL at the
    same time with the connections split between them, summed (p50: mean, p99: max)."""
    urls = [url] if isinstance(url, str) else list(url)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello bench"}], "max_tokens": 8})
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA.format(body=json.dumps(body), key=key))
        script = f.name
    try:
        procs = [subprocess.Popen([wrk, "-t1", f"-c{max(conc // len(urls), 1)}", f"-d{max(int(duration_s), 1)}s",
                                   "--timeout", "10s", "-s", script, u], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for u in urls]
        outs = [p.communicate(timeout=duration_s + 60) for p in procs]
    finally:
        os.unlink(script)
    rs = []
    for u, (out, err) in zip(urls, outs):
        line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed for {u}: {out[-500:]} {err[-500:]}")
        rs.append(json.loads(line[8:]))
    r = {k: sum(x[k] for x in rs) for k in ("requests", "errors", "non2xx")}
    r.update(duration_us=max(x["duration_us"] for x in rs), p50_us=sum(x["p50_us"] for x in rs) / len(rs),
             p99_us=max(x["p99_us"] for x in rs))
    r["rps"] = sum(x["requests"] / (x["duration_us"] / 1e6) for x in rs)
    return r


# ---- servers -----------------------------------------------------------------------------
class Procs:
    """Every process this bench starts, stopped (by pid, process group) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                if p.stdin:
                    try:
                        p.stdin.close()            # the thawline server shuts Serve down on EOF
                    except OSError:
                        pass
                    try:
                        p.wait(timeout=30)
                        continue
                    except subprocess.TimeoutExpired:
                        pass
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
