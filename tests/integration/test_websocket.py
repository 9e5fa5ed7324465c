"""RFC 6455 rules (PROTOCOL section 1), with a raw client that can break
them on purpose."""
import json
import struct

from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS,
                   close_frame, frame)


def opened(server, **kw):
    ws = RawWS(server.port, **kw)
    assert ws.status == 101, ws.head
    welcome = json.loads(ws.read_data())
    assert welcome["type"] == "welcome"
    return ws


def test_handshake_accept_key(server):
    ws = RawWS(server.port)
    assert ws.status == 101
    head = ws.head.decode().lower()
    assert "upgrade: websocket" in head
    assert "connection: upgrade" in head
    assert "sec-websocket-accept:" in head
    ws.close()


def test_accept_key_rfc_sample(server):
    import socket
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data
    s.close()


def test_wrong_version_gets_426(server):
    import socket
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 426 ")
    assert b"Sec-WebSocket-Version: 13\r\n" in data
    s.close()


def test_bad_key_gets_400(server):
    import socket
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    s.close()


def test_fragmented_message_with_interleaved_ping(server):
    ws = opened(server)
    ws.send(frame(OP_TEXT, '{"type":"ping",', fin=False))
    ws.send(frame(OP_PING, b"hb"))
    ws.send(frame(OP_CONT, '"timestamp":', fin=False))
    ws.send(frame(OP_CONT, '77}'))
    fin, op, payload = ws.read_frame()
    assert (op, payload) == (OP_PONG, b"hb")
    r = json.loads(ws.read_data())
    assert r["type"] == "pong" and r["original-timestamp"] == 77
    ws.close()


def test_fragments_one_byte_per_send(server):
    ws = opened(server)
    data = frame(OP_TEXT, json.dumps({"type": "ping", "timestamp": 9}))
    for i in range(len(data)):
        ws.send(data[i:i + 1])
    assert json.loads(ws.read_data())["original-timestamp"] == 9
    ws.close()


def test_every_length_form(server):
    ws = opened(server)
    for n in (10, 125, 126, 200, 65535, 65536, 70000):
        body = json.dumps({"type": "len", "p": "a" * n})
        ws.send(frame(OP_TEXT, body))
        r = json.loads(ws.read_data())
        assert len(r["original"]["p"]) == n
    ws.close()


def test_ping_answered_with_pong(server):
    ws = opened(server)
    ws.send(frame(OP_PING, b"payload-123"))
    while True:
        _, op, payload = ws.read_frame()
        if op == OP_PONG:
            assert payload == b"payload-123"
            break
    ws.close()


def expect_close(ws, code):
    got, _ = ws.read_until_close()
    assert got == code
    ws.wait_eof()
    ws.close()


def test_unmasked_frame_closes_1002(server):
    ws = opened(server)
    ws.send(frame(OP_TEXT, "{}", mask=False))
    expect_close(ws, 1002)


def test_reserved_bits_close_1002(server):
    ws = opened(server)
    ws.send(frame(OP_TEXT, "{}", rsv=0x40))
    expect_close(ws, 1002)


def test_reserved_opcode_close_1002(server):
    ws = opened(server)
    ws.send(frame(3, b"x"))
    expect_close(ws, 1002)


def test_fragmented_control_frame_close_1002(server):
    ws = opened(server)
    ws.send(frame(OP_PING, b"x", fin=False))
    expect_close(ws, 1002)


def test_oversized_control_frame_close_1002(server):
    ws = opened(server)
    ws.send(frame(OP_PING, b"x" * 126))
    expect_close(ws, 1002)


def test_continuation_without_start_close_1002(server):
    ws = opened(server)
    ws.send(frame(OP_CONT, b"x"))
    expect_close(ws, 1002)


def test_new_message_inside_fragmented_close_1002(server):
    ws = opened(server)
    ws.send(frame(OP_TEXT, "{", fin=False))
    ws.send(frame(OP_TEXT, "{}"))
    expect_close(ws, 1002)


def test_binary_frame_close_1003(server):
    ws = opened(server)
    ws.send(frame(OP_BINARY, b"\x00\x01"))
    expect_close(ws, 1003)


def test_invalid_utf8_close_1007(server):
    ws = opened(server)
    ws.send(frame(OP_TEXT, b'{"type":"\xff"}'))
    expect_close(ws, 1007)


def test_invalid_utf8_split_across_fragments_close_1007(server):
    ws = opened(server)
    # U+20AC is E2 82 AC; E2 82 followed by a non-continuation byte is invalid.
    ws.send(frame(OP_TEXT, b'{"a":"\xe2\x82', fin=False))
    ws.send(frame(OP_CONT, b'\x28"}'))
    expect_close(ws, 1007)


def test_valid_utf8_split_across_fragments(server):
    ws = opened(server)
    ws.send(frame(OP_TEXT, b'{"type":"u","a":"\xe2\x82', fin=False))
    ws.send(frame(OP_CONT, b'\xac"}'))
    assert json.loads(ws.read_data())["original"]["a"] == "\u20ac"
    ws.close()


def test_message_too_big_close_1009(server_factory):
    srv = server_factory("--max-message-size", "1024")
    ws = opened(srv)
    ws.send(frame(OP_TEXT, json.dumps({"type": "x", "p": "a" * 2000})))
    expect_close(ws, 1009)
    ws = opened(srv)
    ws.send(frame(OP_TEXT, '{"type":"x","p":"' + "a" * 600, fin=False))
    ws.send(frame(OP_CONT, "a" * 600 + '"}'))
    expect_close(ws, 1009)
    assert srv.stats()["errors"]["message-too-big"] == 2


def test_close_handshake(server):
    ws = opened(server)
    ws.send(close_frame(1000, b"bye"))
    code, _ = ws.read_until_close()
    assert code == 1000
    ws.wait_eof()
    ws.close()


def test_close_with_invalid_code_1002(server):
    ws = opened(server)
    ws.send(close_frame(1005))
    expect_close(ws, 1002)


def test_close_with_one_byte_payload_1002(server):
    ws = opened(server)
    ws.send(frame(OP_CLOSE, b"\x03"))
    expect_close(ws, 1002)


def test_errors_counted(server):
    ws = opened(server)
    ws.send(frame(OP_BINARY, b"x"))
    expect_close(ws, 1003)
    ws = opened(server)
    ws.send(frame(OP_TEXT, b"\xc0\xaf"))
    expect_close(ws, 1007)
    errors = server.stats()["errors"]
    assert errors["unsupported-data"] == 1
    assert errors["invalid-utf8"] == 1
