"""docs/protocol.md keeps step with the code: every `reason`, HTTP error
code, close code, close-frame text, /stats error key and handshake-failure
reason the server can send must be named in it.

The strings are extracted from the sources (src/, shm/), not listed here, so
a reason another engineer adds later fails this test until it is
documented:
  * string literals passed to a parameter named `reason` or `code` (of a
    char type) of any function defined in src/ or shm/ (sl_proto_error,
    sl_httpd_error, sl_conn_close_ws, the admin API's err(), the pubsub and
    RPC failure builders, ...), ternaries included;
  * `"reason", "<literal>"` pairs in JSON built with json_pack;
  * the names tables of shm/shm.c (/stats "errors", "handshake-failures");
  * every SL_WS_CLOSE_* constant the sources use, as its number.
Telemetry fields (SL_TF_*) are not wire messages and are skipped."""
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SOURCES = [os.path.join(ROOT, d, f) for d in ("src", "shm")
           for f in sorted(os.listdir(os.path.join(ROOT, d))) if f.endswith(".c")]


def read(path):
    with open(path) as f:
        return f.read()


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group(0)), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def doc():
    return read(os.path.join(ROOT, "docs", "protocol.md"))


def split_args(s):
    """Top-level comma-separated arguments of s (parentheses balanced)."""
    args, depth, cur, i, in_str = [], 0, "", 0, False
    while i < len(s):
        ch = s[i]
        if in_str:
            cur += ch
            if ch == "\\":
                cur += s[i + 1]
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            cur += ch
        elif ch in "([{":
            depth += 1
            cur += ch
        elif ch in ")]}":
            depth -= 1
            cur += ch
        elif ch == "," and depth == 0:
            args.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip():
        args.append(cur)
    return args


def call_args(text, start):
    """The argument text of the call whose '(' is at text[start]."""
    depth, i, in_str = 0, start, False
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return ""


def reason_params(texts):
    """{function: [indexes of its `reason`/`code` char parameters]} from the
    function definitions in the sources."""
    found = {}
    defn = re.compile(r"^[A-Za-z_][\w \*]*?\b(\w+)\s*\(([^;{)]*(?:\([^)]*\)[^;{)]*)*)\)\s*\{",
                      re.M)
    for text in texts:
        for m in defn.finditer(text):
            name, params = m.group(1), split_args(m.group(2).replace("\n", " "))
            idx = [i for i, p in enumerate(params)
                   if re.search(r"\bchar\b", p) and re.search(r"\b(reason|code)\s*$", p.strip())]
            if idx:
                found[name] = idx
    return found


def literals(arg):
    return re.findall(r'"((?:[^"\\]|\\.)*)"', arg)


def wire_strings():
    texts = [strip_comments(read(p)) for p in SOURCES]
    params = reason_params(texts)
    assert {"sl_proto_error", "sl_httpd_error", "sl_conn_close_ws"} <= set(params), params
    out = {}
    for path, text in zip(SOURCES, texts):
        where = os.path.relpath(path, ROOT)
        for fn, idxs in params.items():
            for m in re.finditer(r"(?<![\w.>])" + re.escape(fn) + r"\s*\(", text):
                # Skip the definition itself.
                line_start = text.rfind("\n", 0, m.start()) + 1
                if re.match(r"^[A-Za-z_][\w \*]*\b" + re.escape(fn) + r"\s*\(",
                            text[line_start:m.end()]) and text[line_start] not in " \t":
                    continue
                args = split_args(call_args(text, m.end() - 1))
                for i in idxs:
                    if i < len(args):
                        for s in literals(args[i]):
                            out.setdefault(s, f"{where}: {fn}()")
        for m in re.finditer(r'(SL_TF_S\(\s*)?"reason"\s*,\s*"([^"]+)"', text):
            if not m.group(1):
                out.setdefault(m.group(2), f"{where}: json \"reason\"")
    shm = strip_comments(read(os.path.join(ROOT, "shm", "shm.c")))
    for m in re.finditer(r'\[SL_(?:ERR|HS)_\w+\]\s*=\s*"([^"]+)"', shm):
        out.setdefault(m.group(1), "shm/shm.c: /stats names")
    return out


def close_codes():
    hdr = read(os.path.join(ROOT, "include", "sl_ws.h"))
    values = dict(re.findall(r"(SL_WS_CLOSE_\w+)\s*=\s*(\d+)", hdr))
    used = set()
    for p in SOURCES:
        used |= set(re.findall(r"SL_WS_CLOSE_\w+", strip_comments(read(p))))
    assert used, "no close codes found: the extractor is broken"
    return {values[u] for u in used if u in values}


def test_extractor_finds_the_known_ones():
    """Guards the extractor itself: these exist today."""
    found = wire_strings()
    for s in ["invalid-json", "invalid-message", "invalid-channel-id", "channel-not-found",
              "max-subscribers-reached", "too-many-subscriptions", "not-subscribed",
              "overloaded", "no-subscribers", "request-not-found", "rpc-timeout",
              "bad-handshake", "unsupported-version", "origin-not-allowed",
              "too-many-connections", "shm-exhausted", "not-found", "method-not-allowed",
              "payload-too-large", "request-timeout", "admin-api-disabled", "unauthorized",
              "slow consumer", "heartbeat timeout", "server shutting down"]:
        assert s in found, s
    assert {"1001", "1002", "1003", "1007", "1008", "1009"} <= close_codes()


def test_every_reason_is_documented():
    text = doc()
    missing = {s: where for s, where in wire_strings().items()
               if f"`{s}`" not in text and f"`{s}" not in text and s not in text}
    assert not missing, "add these to docs/protocol.md: %r" % missing


def test_every_close_code_is_documented():
    text = doc()
    missing = [c for c in close_codes() if c not in text]
    assert not missing, "add these close codes to docs/protocol.md: %r" % missing


def test_readme_and_client_cite_the_document():
    assert "docs/protocol.md" in read(os.path.join(ROOT, "README.md"))
    assert "docs/protocol.md" in read(os.path.join(ROOT, "web", "sente-lite.js"))
    assert "PROTOCOL.md" not in read(os.path.join(ROOT, "README.md"))
