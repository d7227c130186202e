"""cluster/secrets.py without AWS: the secret's JSON is checked without ever echoing a value, and
the env file gives a shell exactly the values of the secret, whatever characters they hold."""
from __future__ import annotations

import json
import shlex
import stat
import subprocess
import sys

import pytest

from cluster.secrets import SecretEnvError, env_file_text, missing_names, parse_secret_env, write_private_file

HAZARDS = {"A_KEY": "it's \"q\" $HOME `id` \\ x", "MULTI": "line1\nline2", "EMPTY": "", "UNI": "clé ✓"}


def test_the_env_file_gives_the_shell_exactly_the_secret(tmp_path):
    path = tmp_path / "sub" / "node.env"
    write_private_file(path, env_file_text(HAZARDS, source="arn:secret"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    dump = "import json, os; print(json.dumps({k: os.environ.get(k) for k in %r}))" % sorted(HAZARDS)
    out = subprocess.run(["bash", "-c", f". {path}; {sys.executable} -c {shlex.quote(dump)}"], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == HAZARDS


def test_rewriting_keeps_the_mode_and_replaces_the_content(tmp_path):
    path = tmp_path / "node.env"
    write_private_file(path, "old\n")
    write_private_file(path, "new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["node.env"]


@pytest.mark.parametrize("raw, expected", [
    ("s3cr3t-not-json", "not JSON"),
    (json.dumps(["s3cr3t"]), "non-empty JSON object"),
    (json.dumps({}), "non-empty JSON object"),
    (json.dumps({"BAD-NAME": "s3cr3t"}), "'BAD-NAME' is not an environment variable name"),
    (json.dumps({"PORT": 80}), "the value of PORT must be a string"),
    (json.dumps({"K": "s3cr3t\0"}), "the value of K must be a string without NUL"),
])
def test_a_malformed_secret_is_named_but_never_shown(raw, expected):
    with pytest.raises(SecretEnvError) as info:
        parse_secret_env(raw, source="secret x")
    assert expected in str(info.value) and "s3cr3t" not in str(info.value)


def test_required_names_must_be_set_and_non_empty():
    env = parse_secret_env(json.dumps({"THAWLINE_ADMIN_KEY": "a", "RAY_AUTH_TOKEN": ""}))
    assert missing_names(env, ["THAWLINE_ADMIN_KEY", "RAY_AUTH_TOKEN", "OTHER"]) == ["RAY_AUTH_TOKEN", "OTHER"]
