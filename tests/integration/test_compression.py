"""permessage-deflate (RFC 7692, issue 16): the negotiation variants, a
channel message compressed once and the same bytes sent to every
compressing subscriber (on every worker), clients that did not negotiate
it or asked for a smaller server window get it uncompressed, small messages
go uncompressed, compressed client messages inflated within
--max-message-size (a zip bomb is closed 1009), corrupt data 1007, RSV1
without the extension 1002.  Raw frames (wsraw), compression with Python's
zlib: independent of the server's code."""
import json
import struct
import zlib

import pytest

from wsraw import OP_TEXT, RawWS, frame

PMD = "permessage-deflate"
ACCEPTED = PMD + "; server_no_context_takeover; client_no_context_takeover"


def ext_of(ws):
    for line in ws.head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"sec-websocket-extensions":
            return v.strip().decode()
    return None


def deflate(data):
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data):
    d = zlib.decompressobj(wbits=-15)
    return d.decompress(data + b"\x00\x00\xff\xff")


def read_raw_frame(ws):
    """(first byte, payload) of the next frame, skipping pings."""
    while True:
        ws._need(2)
        b0, b1 = ws.buf[0], ws.buf[1]
        n, p = b1 & 0x7F, 2
        if n == 126:
            ws._need(4)
            n, p = struct.unpack(">H", ws.buf[2:4])[0], 4
        elif n == 127:
            ws._need(10)
            n, p = struct.unpack(">Q", ws.buf[2:10])[0], 10
        ws._need(p + n)
        raw, payload = ws.buf[:p + n], ws.buf[p:p + n]
        ws.buf = ws.buf[p + n:]
        if b0 & 0x0F == 0x9:
            continue
        return b0, payload, raw


def message(ws):
    b0, payload, _ = read_raw_frame(ws)
    return json.loads(inflate(payload) if b0 & 0x40 else payload)


def client(server, offer=None, **kw):
    headers = {"Sec-WebSocket-Extensions": offer} if offer else None
    ws = RawWS(server.port, headers=headers, **kw)
    assert ws.status == 101
    ws.welcome = message(ws)
    assert ws.welcome["type"] == "welcome"
    return ws


@pytest.mark.parametrize("offer,want", [
    (None, None),
    (PMD, ACCEPTED),
    (PMD + "; client_max_window_bits", ACCEPTED),
    (PMD + "; client_max_window_bits=10; server_no_context_takeover", ACCEPTED),
    (PMD + "; client_no_context_takeover", ACCEPTED),
    (PMD + "; server_max_window_bits=10", ACCEPTED + "; server_max_window_bits=10"),
    (PMD + '; server_max_window_bits="12"', ACCEPTED + "; server_max_window_bits=12"),
    (PMD + "; server_max_window_bits=15", ACCEPTED + "; server_max_window_bits=15"),
    ("x-webkit-deflate-frame, " + PMD, ACCEPTED),
    (PMD + "; server_max_window_bits=7, " + PMD, ACCEPTED),  # first declined, second taken
    (PMD + "; server_max_window_bits=7", None),   # out of range
    (PMD + "; server_max_window_bits", None),     # needs a value
    (PMD + "; client_max_window_bits=16", None),
    (PMD + "; server_no_context_takeover=1", None),
    (PMD + "; foo", None),                        # unknown parameter
    (PMD + "; client_max_window_bits; client_max_window_bits", None),  # repeated
    ("x-webkit-deflate-frame", None),
])
def test_negotiation(server, offer, want):
    ws = client(server, offer)
    assert ext_of(ws) == want
    ws.close()


def test_two_headers_and_no_compression(server_factory):
    s = server_factory()
    ws = RawWS(s.port, headers={"Sec-WebSocket-Extensions": "foo"})
    ws.close()
    # The offer in a second header counts too (RawWS sends one dict: join).
    raw = RawWS(s.port, headers={"Sec-WebSocket-Extensions": "foo\r\nSec-WebSocket-Extensions: "
                                 + PMD})
    assert ext_of(raw) == ACCEPTED
    raw.close()
    off = server_factory("--no-compression")
    assert ext_of(client(off, PMD)) is None


def test_encode_once_byte_identical(server_factory):
    s = server_factory("--compression-min-bytes", "100", workers=2)
    zipped = [client(s, PMD) for _ in range(6)]
    plain = client(s)
    small_window = client(s, PMD + "; server_max_window_bits=10")
    assert {w.welcome["worker"] for w in zipped} == {0, 1}  # both workers
    everyone = zipped + [plain, small_window]
    for w in everyone:
        w.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "json"})))
        assert message(w)["success"] is True
    doc = {"rows": [{"id": i, "name": "sensor-%03d" % i, "ok": True, "v": i * 1.5}
                    for i in range(40)]}
    body = json.dumps({"type": "publish", "channel-id": "json", "data": doc})
    assert len(body) > 2000
    plain.send(frame(OP_TEXT, body))
    assert message(plain)["type"] == "publish-result"
    frames, zpayload = [], None
    for w in zipped:
        b0, zpayload, raw = read_raw_frame(w)
        assert b0 == 0xC1, hex(b0)  # FIN, RSV1, text
        frames.append(raw)
    assert len(set(frames)) == 1, "every compressing subscriber gets the same bytes"
    b0, payload, raw = read_raw_frame(plain)
    assert b0 == 0x81
    got = json.loads(payload)
    assert inflate(zpayload) == payload
    assert got["data"] == doc
    b0, payload, _ = read_raw_frame(small_window)
    assert b0 == 0x81 and json.loads(payload) == got  # uncompressed for it
    assert len(frames[0]) < len(payload) / 2
    # A small message goes uncompressed even to compressing clients.
    zipped[0].send(frame(OP_TEXT, json.dumps({"type": "ping"})))
    b0, payload, _ = read_raw_frame(zipped[0])
    assert b0 == 0x81 and json.loads(payload)["type"] == "pong"
    for w in everyone:
        w.close()


def test_client_messages_inflated(server):
    a = client(server, PMD)
    b = client(server)
    b.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "z"})))
    assert message(b)["success"] is True
    pub = json.dumps({"type": "publish", "channel-id": "z", "data": "y" * 5000}).encode()
    a.send(frame(OP_TEXT, deflate(pub), rsv=0x40))
    assert message(a)["type"] == "publish-result"
    assert message(b)["data"] == "y" * 5000
    # Fragmented: RSV1 on the first frame only.
    z = deflate(pub)
    a.send(frame(OP_TEXT, z[:10], fin=False, rsv=0x40) + frame(0, z[10:]))
    assert message(a)["type"] == "publish-result"
    assert message(b)["data"] == "y" * 5000


def close_of(ws):
    while True:
        b0, payload, _ = read_raw_frame(ws)
        if b0 & 0x0F == 0x8:
            return struct.unpack(">H", payload[:2])[0]


def test_zip_bomb_and_corrupt_data(server_factory):
    s = server_factory("--max-message-size", "64K")
    bomb = deflate(b"[" + b" " * (10 << 20) + b"]")
    assert len(bomb) < 64 * 1024
    a = client(s, PMD)
    a.send(frame(OP_TEXT, bomb, rsv=0x40))
    assert close_of(a) == 1009
    b = client(s, PMD)
    b.send(frame(OP_TEXT, b"\xff\xfe\xfd not deflate", rsv=0x40))
    assert close_of(b) == 1007
    c = client(s, PMD)
    c.send(frame(OP_TEXT, deflate(b"\xc3\x28 bad utf-8"), rsv=0x40))
    assert close_of(c) == 1007
    d = client(s)  # RSV1 without the extension
    d.send(frame(OP_TEXT, deflate(b"{}"), rsv=0x40))
    assert close_of(d) == 1002
    e = client(s, PMD)  # RSV1 on a continuation frame
    e.send(frame(OP_TEXT, b"{", fin=False) + frame(0, b"}", rsv=0x40))
    assert close_of(e) == 1002
    err = s.stats()["errors"]
    assert err["message-too-big"] == 1
    assert err["invalid-utf8"] == 2
    assert err["protocol-error"] == 2


def test_non_reading_compressing_subscriber_is_bounded(server_factory):
    """Review r16 H1: the compressed twin of a frame kept the capacity of
    the uncompressed one, so a compressing subscriber that does not read
    held ~500 KB per queued message while its queue counted ~500 bytes:
    --max-outbound-bytes bounded about 1000 times its figure.  Now the
    twin is exactly its compressed size: the worker's outbound-bytes
    (every live output buffer) stays within --max-outbound-bytes."""
    import base64
    import os
    from conftest import wait_for
    bound = 2 << 20
    s = server_factory("--max-outbound-bytes", "2M", "--max-message-size", "1M", workers=1)
    sub = client(s, PMD, rcvbuf=4096)
    sub.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "z"})))
    assert message(sub)["success"] is True
    pub = client(s)
    sent = 0

    def publish(data):
        pub.send(frame(OP_TEXT, json.dumps({"type": "publish", "channel-id": "z", "data": data})))
        assert message(pub)["type"] == "publish-result"

    # Fill the socket with incompressible data until output stays queued.
    for _ in range(100):  # loopback takes a few MB first
        publish(base64.b64encode(os.urandom(75000)).decode())
        sent += 1
        if s.stats()["outbound-bytes"] >= 100000:
            break
    wait_for(lambda: s.stats()["outbound-bytes"] > 0, what="the subscriber's queue non-empty")
    for _ in range(40):  # 20 MB of messages, ~20 KB once compressed
        publish("a" * 500000)
        sent += 1
    held = s.stats()["outbound-bytes"]
    assert held < bound, f"{held} bytes held for a queue bounded at {bound}"
    assert s.stats()["errors"].get("slow-consumer", 0) == 0
    # Nothing lost: the subscriber reads every message.
    sub.sock.settimeout(30)
    got = [message(sub) for _ in range(sent)]
    assert got[-1]["data"] == "a" * 500000
    sub.close()
    pub.close()


@pytest.mark.parametrize("bits", [10, 15])
def test_server_window_echoed_for_an_independent_client(server, bits):
    """Review r16 M2: server_max_window_bits was accepted without being
    echoed (RFC 7692 7.1.2.1), so a client that checks the answer - Python
    websockets, an independent implementation - failed the handshake.
    Now the answer carries it, and messages both ways work."""
    import asyncio
    import websockets
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    async def run():
        ext = ClientPerMessageDeflateFactory(server_max_window_bits=bits,
                                             client_max_window_bits=True)
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/",
                                      extensions=[ext], compression=None) as ws:
            assert f"server_max_window_bits={bits}" in \
                ws.response_headers["Sec-WebSocket-Extensions"]
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "subscribe", "channel-id": "w"}))
            assert json.loads(await ws.recv())["success"] is True
            doc = "x" * 3000  # over --compression-min-bytes: compressed (client side)
            await ws.send(json.dumps({"type": "publish", "channel-id": "w", "data": doc}))
            got = [json.loads(await ws.recv()) for _ in range(2)]
            assert {m["type"] for m in got} == {"publish-result", "channel-message"}
            assert [m["data"] for m in got if m["type"] == "channel-message"] == [doc]

    asyncio.run(asyncio.wait_for(run(), 20))


def test_inflated_bytes_count_against_the_turn(server_factory):
    """Review r16 M1: the per-turn budget counted bytes read and messages,
    so one 16 KiB read of compressed messages (each ~1 KB inflating to
    ~1 MB) was up to 16 MB of inflating, validating and parsing in one
    turn while every other connection of the worker waited.  Now the
    inflated bytes count: the turn ends after 256 KiB of messages.
    Observed by order, not time: A sends 11 such messages and then a small
    publish to "s" in one write; once A's first answer is out, B publishes
    to "s".  Within one turn (before) A's publish always came first; now
    B's is taken up between A's turns and arrives first."""
    s = server_factory("--max-message-size", "2M", workers=1)
    sub = client(s)
    sub.send(frame(OP_TEXT, json.dumps({"type": "subscribe", "channel-id": "s"})))
    assert message(sub)["success"] is True
    a = client(s, PMD)
    b = client(s)
    heavy = json.dumps({"type": "publish", "channel-id": "void",
                        "data": [0] * 500000}, separators=(",", ":")).encode()
    z = deflate(heavy)
    burst = b"".join(frame(OP_TEXT, z, rsv=0x40) for _ in range(11))
    burst += frame(OP_TEXT, deflate(json.dumps(
        {"type": "publish", "channel-id": "s", "data": "A"}).encode() + b" " * 200), rsv=0x40)
    assert len(burst) < 16 * 1024, len(burst)  # one read
    a.sock.settimeout(60)
    a.send(burst)
    message(a)  # the first answer: A's first turn is over
    b.send(frame(OP_TEXT, json.dumps({"type": "publish", "channel-id": "s", "data": "B"})))
    sub.sock.settimeout(60)
    order = [message(sub)["data"] for _ in range(2)]
    assert order == ["B", "A"], order
    for _ in range(11):
        message(a)
