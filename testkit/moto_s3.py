"""A real S3 endpoint on loopback: a moto server in a child process, for tests and benches.

    with moto_s3_server() as endpoint:      # http://127.0.0.1:<port>; AWS_* env set meanwhile
        url = make_bucket(endpoint, "b")    # s3://b
        copy_tree(local_dir, f"{url}/tiny/1")

s3fs and boto read the endpoint and the dummy credentials from the AWS_* environment, so
everything started while the server runs (Ray workers included) talks to it without extra
arguments. Used by the `moto_server` fixture (tests/conftest.py) and bench/cold_start.py.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from testkit.net import free_port, wait_for_port


def moto_env(endpoint: str) -> dict[str, str]:
    """AWS_* env that points s3fs/boto at `endpoint` with moto's accepted dummy credentials."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


@contextlib.contextmanager
def moto_s3_server(host: str = "127.0.0.1") -> Iterator[str]:
    """Start moto's S3 server on a free port of `host`; yields its endpoint URL with moto_env set
    in os.environ, restored (and the server stopped) on exit."""
    port = free_port(host)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    old: dict[str, str | None] = {}
    try:
        wait_for_port(host, port)
        endpoint = f"http://{host}:{port}"
        env = moto_env(endpoint)
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=10)


def s3fs_for(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def make_bucket(endpoint: str, bucket: str) -> str:
    """Create `bucket` unless it exists; returns `s3://<bucket>`."""
    fs = s3fs_for(endpoint)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return f"s3://{bucket}"


def copy_tree(endpoint: str, src: Path, dst_url: str, *, last: tuple[str, ...] = ()) -> list[str]:
    """Upload every file under `src` to `dst_url` (s3://bucket/prefix), the relative paths in
    `last` after all others (e.g. a commit marker). One PUT per file: moto's multipart path
    failed intermittently under CPU contention ("upload does not exist")."""
    fs = s3fs_for(endpoint)
    files = sorted((p for p in src.rglob("*") if p.is_file()),
                   key=lambda p: (str(p.relative_to(src)) in last, str(p.relative_to(src))))
    dst = dst_url.removeprefix("s3://").rstrip("/")
    for f in files:
        rel = str(f.relative_to(src))
        fs.put_file(str(f), f"{dst}/{rel}", chunksize=max(f.stat().st_size, 5 << 20))
    return [str(f.relative_to(src)) for f in files]
