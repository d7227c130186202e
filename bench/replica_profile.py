"""Where a gateway replica's CPU goes under load: py-spy on the replica while bench/gateway.py runs.

    .venv/bin/python -m bench.replica_profile [--seconds 45] [--top 25] [--out /tmp/replica.folded]

Runs `bench/gateway.py --targets thawline` (1 replica, direct ingress; 2 rounds x 6 s per
scenario) and, once its replica is up, `py-spy record --nonblocking` on that replica's process
(every thread; idle samples left out). Prints the samples by component (the innermost frame that
belongs to one: gateway code, Serve's replica, uvicorn, the aiohttp client, Ray metrics, logging,
asyncio, the rest of Ray), then the functions with most samples of their own and inclusive,
then the bench's own table. py-spy's frames of coroutines are approximate; the components are
the reliable part. Needs py-spy (in .venv) and root or ptrace rights.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# py-spy names a frame "func (path:line)", the path relative to site-packages or the repository
COMPONENTS = (("ray metrics", ("ray/util/metrics.py",)), ("logging", ("logging/",)),
              ("aiohttp client", ("aiohttp/", "multidict/", "yarl/")), ("uvicorn", ("uvicorn/", "httptools")),
              ("starlette", ("starlette/",)), ("Serve replica", ("ray/serve/",)), ("gateway", ("gateway/",)),
              ("asyncio", ("asyncio/", "uvloop")), ("Ray (other)", ("ray/",)), ("threading", ("threading.py",)))


def _component(frames: list[str]) -> str:
    """The innermost frame's component that is one of COMPONENTS."""
    for f in reversed(frames):
        loc = f.partition(" (")[2]
        for name, pats in COMPONENTS:
            if any(loc.startswith(p) or f"/{p}" in loc for p in pats):
                return name
    return "other"


def _frame_name(frame: str) -> str:
    fn, _, loc = frame.partition(" (")
    return f"{fn} ({'/'.join(loc.rstrip(')').rsplit(':', 1)[0].split('/')[-2:])})"


def summarize(folded: Path, top: int) -> str:
    comp, own, incl = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames, n = stack.split(";"), int(n)
        total += n
        own[_frame_name(frames[-1])] += n
        for name in {_frame_name(f) for f in frames}:
            incl[name] += n
        comp[_component(frames)] += n
    out = [f"{total} samples", "--- by component ---"]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in comp.most_common()]
    out += ["--- own samples ---"] + [f"{100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    out += ["--- inclusive ---"] + [f"{100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=45, help="how long py-spy samples")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="/tmp/thawline-replica.folded", help="py-spy's raw (folded) output")
    a = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    bench = subprocess.Popen([sys.executable, str(REPO / "bench" / "gateway.py"), "--skip-litellm", "--targets",
                              "thawline", "--rounds", "2", "--duration", "6"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = None
    deadline = time.monotonic() + 300
    while pid is None and time.monotonic() < deadline:
        line = bench.stderr.readline()
        if not line and bench.poll() is not None:
            raise SystemExit("bench/gateway.py exited before its replica was up")
        m = re.search(r"thawline: load .* replica pids \[(\d+)", line)
        pid = int(m.group(1)) if m else None
    if pid is None:
        raise SystemExit("no replica pid from bench/gateway.py")
    time.sleep(3)                            # into the warm-up
    subprocess.run([spy, "record", "-p", str(pid), "-r", "250", "-d", str(a.seconds), "--nonblocking",
                    "-f", "raw", "-o", a.out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, err = bench.communicate()
    print(summarize(Path(a.out), a.top))
    print("\n" + out.strip())


if __name__ == "__main__":
    main()
