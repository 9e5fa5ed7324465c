"""Configuration as an operator meets it: every seed environment variable
takes effect when its flag is absent, the flag wins when both are given,
and every flag refuses a bad value at start-up, naming itself, with exit
status 2.  The effective settings are read back from /stats server-config."""
import http.client
import os
import subprocess

import pytest

from conftest import BIN, free_port, wait_for

# (environment variable, its value, the flag and a different value,
#  server-config key, value expected from the environment, from the flag)
ENV_FLAGS = [
    ("HOST", "127.0.0.1", ["--host", "127.0.0.1"], "host", "127.0.0.1", "127.0.0.1"),
    ("TELEMETRY_ENABLED", "false", ["--telemetry"], "telemetry", False, True),
    ("APP_NAME", "fromenv", ["--app-name", "fromflag"], "app-name", "fromenv", "fromflag"),
    ("AUTO_CREATE_CHANNELS", "false", ["--auto-create"], "auto-create", False, True),
    ("MAX_SUBSCRIBERS", "7", ["--max-subscribers", "9"], "max-subscribers", 7, 9),
    ("MESSAGE_RETENTION", "3", ["--message-retention", "5"], "message-retention", 3, 5),
    ("SENTE_ADMIN_TOKEN", "envtoken", ["--admin-token", "flagtoken"], "admin-token", True, True),
]


@pytest.mark.parametrize("var,val,flag,key,from_env,from_flag", ENV_FLAGS,
                         ids=[e[0] for e in ENV_FLAGS])
def test_env_applies_and_flag_wins(server_factory, var, val, flag, key, from_env, from_flag):
    srv = server_factory(env={var: val})
    assert srv.stats()["server-config"][key] == from_env
    srv2 = server_factory(*flag, env={var: val})
    assert srv2.stats()["server-config"][key] == from_flag


def test_port_env(tmp_path):
    """PORT alone picks the port (the fixture always passes --port, so this
    one starts the binary itself)."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1")
    proc = subprocess.Popen([BIN, "--workers", "1", "--log-file", str(tmp_path / "log")],
                            env=env, stderr=subprocess.PIPE)
    try:
        def up():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                return c.getresponse().status == 200
            except OSError:
                return False
        wait_for(up, what="server on PORT")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_admin_token_flag_beats_env(server_factory):
    srv = server_factory("--admin-token", "flagtoken", env={"SENTE_ADMIN_TOKEN": "envtoken"})
    auth = lambda t: {"Authorization": "Bearer " + t}  # noqa: E731
    assert srv.request("GET", "/api/connections", headers=auth("flagtoken"))[0] == 200
    assert srv.request("GET", "/api/connections", headers=auth("envtoken"))[0] == 401


BAD = [
    ["--port", "70000"], ["--port", "-1"], ["--host", ""],
    ["--workers", "many"], ["--workers", "100000"],
    ["--max-connections", "0"], ["--max-connections", "1x"],
    ["--heartbeat-interval-ms", "-5"], ["--message-timeout-ms", "0"],
    ["--max-message-size", "0"], ["--max-message-size", "9999999999999999999"],
    ["--max-outbound-bytes", "1Q"], ["--allowed-origin", ""],
    ["--app-name", ""], ["--log-level", "chatty"], ["--log-format", "yaml"],
    ["--shm-size", "1k"], ["--max-subscribers", "-3"],
    ["--message-retention", "lots"], ["--rpc-timeout-ms", "0"],
    ["--max-subscriptions-per-connection", "0"], ["--admin-token", ""],
    ["--channel", ""], ["--channel", "c:unknown-key=1"],
    ["--channel", "c:max-subscribers=abc"], ["--channel", "c:message-retention="],
    ["--port"],
    # One instance and db twice (review rl17 M1: two shards sharing one nodepr set).
    ["--redis", "redis://127.0.0.1:6390", "--redis", "redis://127.0.0.1:6390/0"],
    ["--redis", "unix:///tmp/r.sock", "--redis", "unix:///tmp/r.sock"],
]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) or "empty" for a in BAD])
def test_bad_values_refused_naming_the_flag(args):
    out = subprocess.run([BIN, "--host", "127.0.0.1", "--port", "1"] + args,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2, out.stderr
    assert args[0] in out.stderr, out.stderr


@pytest.mark.parametrize("var,val", [
    ("PORT", "0"), ("HOST", ""), ("TELEMETRY_ENABLED", "maybe"), ("APP_NAME", ""),
    ("AUTO_CREATE_CHANNELS", "2"), ("MAX_SUBSCRIBERS", "x"), ("MESSAGE_RETENTION", "-1"),
])
def test_bad_environment_refused_naming_the_variable(var, val):
    out = subprocess.run([BIN], capture_output=True, text=True, timeout=10,
                         env=dict(os.environ, **{var: val}))
    assert out.returncode == 2, out.stderr
    assert var in out.stderr, out.stderr


def test_help_lists_every_flag_with_defaults():
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    for flag in ["--port", "--host", "--workers", "--max-connections",
                 "--heartbeat-interval-ms", "--message-timeout-ms", "--[no-]auto-create",
                 "--max-subscribers", "--message-retention", "--rpc-timeout-ms", "--channel",
                 "--[no-]telemetry", "--app-name", "--log-file", "--log-level", "--log-format",
                 "--shm-size", "--admin-token", "--allowed-origin", "--max-message-size",
                 "--max-outbound-bytes", "--echo", "--max-subscriptions-per-connection",
                 "--pid-file", "--version", "--help"]:
        assert flag in out.stdout, flag
    assert "[default: 3000]" in out.stdout and "[env: SENTE_PORT, PORT]" in out.stdout
