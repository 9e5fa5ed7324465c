"""The configuration as a packager and an operator meet it: --config FILE /
-c FILE (`key = value`, repeatable keys, `#` comments), a SENTE_*
environment variable for every flag (the seeds' names kept as aliases), the
precedence flags > environment > file > defaults (a full matrix), and
--check-config / -t, -h, -v."""
import itertools
import os
import re
import subprocess

import pytest

from conftest import BIN


def run(args, env=None, timeout=10):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SENTE_")}
    full.update(env or {})
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=full)


def effective(out):
    """--check-config output -> {key: [values]} (comments skipped)."""
    conf = {}
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.partition(" = ")
        conf.setdefault(k, []).append(v)
    return conf


def check(tmp_path, file_lines=None, env=None, flags=()):
    args = []
    if file_lines is not None:
        p = tmp_path / "sente.conf"
        p.write_text("\n".join(file_lines) + "\n")
        args += ["--config", str(p)]
    r = run(args + list(flags) + ["--check-config"], env=env)
    assert r.returncode == 0, r.stderr
    return effective(r.stdout)


# (key, default, file value, env value, flag value): four distinct values.
MATRIX = [
    ("max-connections", "10000", "11", "12", "13"),
    ("telemetry", "true", "false", "true", "false"),
    ("app-name", "sente-lite", "from-file", "from-env", "from-flag"),
    ("log-level", "info", "warn", "error", "debug"),
    ("max-message-size", "1048576", "2048", "4096", "8192"),
]


@pytest.mark.parametrize("key,default,fv,ev,gv", MATRIX, ids=[m[0] for m in MATRIX])
def test_precedence_matrix(tmp_path, key, default, fv, ev, gv):
    env_name = "SENTE_" + key.upper().replace("-", "_")
    for in_file, in_env, in_flag in itertools.product([False, True], repeat=3):
        flags = []
        if in_flag:
            if key == "telemetry":
                flags = ["--no-telemetry"] if gv == "false" else ["--telemetry"]
            else:
                flags = [f"--{key}", gv]
        conf = check(tmp_path, [f"{key} = {fv}"] if in_file else None,
                     {env_name: ev} if in_env else None, flags)
        want = gv if in_flag else ev if in_env else fv if in_file else default
        assert conf[key] == [want], (key, in_file, in_env, in_flag, conf[key])


def test_repeatable_keys_and_lists_replace_by_source(tmp_path):
    lines = ["# channels", "channel = a b:message-retention=3", "channel = c#d",
             "  allowed-origin = https://x.example  ", "allowed-origin = https://y.example"]
    conf = check(tmp_path, lines)
    assert [c.split(":")[0] for c in conf["channel"]] == ["a b", "c#d"]
    assert conf["allowed-origin"] == ["https://x.example", "https://y.example"]
    # A higher source that names the option at all replaces the whole list.
    conf = check(tmp_path, lines, flags=["--channel", "z"])
    assert [c.split(":")[0] for c in conf["channel"]] == ["z"]
    assert conf["allowed-origin"] == ["https://x.example", "https://y.example"]
    # Several values in one variable: one a line.
    conf = check(tmp_path, lines, env={"SENTE_CHANNEL": "e1\ne2:max-subscribers=5"})
    assert conf["channel"][0].startswith("e1:") and conf["channel"][1].startswith(
        "e2:max-subscribers=5")


def test_seed_aliases_and_sente_names(tmp_path):
    conf = check(tmp_path, env={"PORT": "4100"})
    assert conf["port"] == ["4100"]
    conf = check(tmp_path, env={"PORT": "4100", "SENTE_PORT": "4200"})
    assert conf["port"] == ["4200"]  # the SENTE_ name wins over the alias
    conf = check(tmp_path, ["port = 4000"], env={"HOST": "127.0.0.9"})
    assert conf["port"] == ["4000"] and conf["host"] == ["127.0.0.9"]


def test_every_flag_has_a_sente_variable_and_a_config_key(tmp_path):
    out = run(["--help"]).stdout
    flags = re.findall(r"^  --(?:\[no-\])?([a-z][a-z0-9-]*)", out, re.M)
    assert len(flags) > 25
    meta = {"config", "check-config", "help", "version"}
    for flag in flags:
        if flag in meta:
            continue
        var = "SENTE_" + flag.upper().replace("-", "_")
        assert f"[env: {var}" in out, flag
    # Every key --check-config prints is accepted back in a file: the output
    # is itself a valid configuration.  Every kind of option is set once.
    secret = tmp_path / "hs.key"
    secret.write_text("s" * 40)
    admin = tmp_path / "admin.token"
    admin.write_text("never-printed-admin-token\n")
    pw = tmp_path / "redis.pw"
    pw.write_text("never-printed-redis-password\n")
    first = run(["--check-config", "--channel", "k:message-retention=2",
                 "--allowed-origin", "https://o.example", "--trusted-proxy", "10.0.0.0/8",
                 "--log-file", "/tmp/x.log", "--echo", "--jwt-secret-file", str(secret),
                 "--namespace", ":subscribe=authenticated",
                 "--namespace", "chat:publish=token,rpc=subscribers,max-subscribers=5",
                 "--ops-listen", "[::1]:9100", "--admin-token-file", str(admin),
                 "--redis", "redis://127.0.0.1:6399/2", "--node-id", "n1",
                 "--redis-password-file", str(pw)]).stdout
    assert "never-printed-admin-token" not in first
    assert "never-printed-redis-password" not in first
    p = tmp_path / "round.conf"
    p.write_text(first)
    again = run(["-c", str(p), "-t"])
    assert again.returncode == 0, again.stderr
    assert effective(again.stdout) == effective(first)
    conf = effective(first)
    assert conf["ops-listen"] == ["[::1]:9100"]
    assert [n.split(":")[0] for n in conf["namespace"]] == ["", "chat"]
    assert "publish=token" in conf["namespace"][1] and "max-subscribers=5" in conf["namespace"][1]
    for flag in flags:
        if flag not in meta and flag != "admin-token":  # secrets are never printed
            assert flag in conf or f"# {flag} is not set" in first, flag


def test_admin_token_is_never_printed(tmp_path):
    for args, env in ((["--admin-token", "tok-on-the-command-line"], None),
                      ([], {"SENTE_ADMIN_TOKEN": "tok-on-the-command-line"})):
        r = run(args + ["-t"], env=env)
        assert r.returncode == 0, r.stderr
        assert "tok-on-the-command-line" not in r.stdout + r.stderr
        assert "# admin-token is set (never shown)" in r.stdout


def test_namespaces_through_every_source(tmp_path):
    """--namespace is repeatable like --channel: `namespace =` lines in the
    file, SENTE_NAMESPACE (alias SENTE_NAMESPACES; several separated by
    white space) in the environment, the flag; the highest source that names
    it gives the whole list."""
    names = lambda conf: [n.split(":")[0] for n in conf.get("namespace", [])]
    lines = ["namespace = a:publish=none", "namespace = b:rpc=none"]
    assert names(check(tmp_path, lines)) == ["a", "b"]
    for var in ("SENTE_NAMESPACE", "SENTE_NAMESPACES"):
        conf = check(tmp_path, lines, env={var: "c:publish=none d:subscribe=none\ne:rpc=none"})
        assert names(conf) == ["c", "d", "e"], var
    conf = check(tmp_path, lines, env={"SENTE_NAMESPACE": "c:publish=none"},
                 flags=["--namespace", "f:publish=subscribers"])
    assert names(conf) == ["f"] and "publish=subscribers" in conf["namespace"][0]
    # The derived name beats the alias.
    conf = check(tmp_path, env={"SENTE_NAMESPACES": "x:rpc=none", "SENTE_NAMESPACE": "y:rpc=none"})
    assert names(conf) == ["y"]
    # Errors name the source: the file and line, the variable.
    p = tmp_path / "bad.conf"
    p.write_text("port = 4000\nnamespace = chat:subscribe=subscribers\n")
    r = run(["-c", str(p), "-t"])
    assert r.returncode == 2 and f"{p}:2: namespace" in r.stderr, r.stderr
    r = run(["-t"], env={"SENTE_NAMESPACE": "ok:rpc=none bad"})
    assert r.returncode == 2 and "SENTE_NAMESPACE" in r.stderr, r.stderr
    # A rule that needs a token with no key to check one is refused.
    r = run(["-t", "--namespace", "chat:publish=token"])
    assert r.returncode == 2 and "needs --jwt-secret-file" in r.stderr, r.stderr


def test_short_options_and_exit_codes(tmp_path):
    assert run(["-h"]).returncode == 0 and "usage:" in run(["-h"]).stdout
    v = run(["-v"])
    assert v.returncode == 0 and re.match(r"sente-lite \d+\.\d+\.\d+", v.stdout)
    p = tmp_path / "ok.conf"
    p.write_text("port = 4321\n")
    t = run(["-c", str(p), "-t"])
    assert t.returncode == 0 and "port = 4321" in t.stdout
    assert run(["-x"]).returncode == 2


BAD_FILES = [
    (["port = 70000"], "sente.conf:1: port"),
    (["# fine", "", "bogus = 1"], "sente.conf:3: unknown key 'bogus'"),
    (["no equals sign"], "sente.conf:1: expected `key = value`"),
    (["channel = c:unknown=1"], "sente.conf:1: channel"),
    (["help = true"], "unknown key 'help'"),
    (["x" * 5000], "line too long"),
]


@pytest.mark.parametrize("lines,msg", BAD_FILES, ids=[b[1][:30] for b in BAD_FILES])
def test_bad_config_file_refused_with_file_and_line(tmp_path, lines, msg):
    p = tmp_path / "sente.conf"
    p.write_text("\n".join(lines) + "\n")
    for extra in ([], ["--check-config"]):
        r = run(["--config", str(p)] + extra)
        assert r.returncode == 2, r.stdout + r.stderr
        assert msg in r.stderr, r.stderr


def test_missing_config_file(tmp_path):
    r = run(["-c", str(tmp_path / "none.conf"), "-t"])
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = run(["-t"], env={"SENTE_CONFIG": str(tmp_path / "none.conf")})
    assert r.returncode == 2 and "none.conf" in r.stderr


def test_bad_env_value_names_the_sente_variable():
    r = run(["-t"], env={"SENTE_MAX_CONNECTIONS": "lots"})
    assert r.returncode == 2 and "SENTE_MAX_CONNECTIONS" in r.stderr


def test_server_runs_with_file_env_and_flags(server_factory, tmp_path):
    p = tmp_path / "sente.conf"
    p.write_text("message-retention = 7\nmax-subscribers = 9\napp-name = filed\n"
                 "channel = pre:message-retention=2\n")
    srv = server_factory("--config", str(p), "--app-name", "flagged",
                         env={"SENTE_MAX_SUBSCRIBERS": "8"})
    cfg = srv.stats()["server-config"]
    assert cfg["message-retention"] == 7 and cfg["max-subscribers"] == 8
    assert cfg["app-name"] == "flagged" and cfg["config"] == str(p)
    assert [c["name"] for c in cfg["channel"]] == ["pre"]


def test_example_config_is_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    r = run(["-c", os.path.join(root, "scripts", "sente-lite.conf"), "-t"])
    assert r.returncode == 0, r.stderr
    assert effective(r.stdout)["host"] == ["0.0.0.0"]
