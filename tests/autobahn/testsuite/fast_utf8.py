"""A faster stand-in for the client's incoming UTF-8 validator, with the same
answers (sente-lite's addition to the vendored runner, not part of the
Autobahn checkout).

The fuzzing client checks every text message the server echoes with
autobahn's Utf8Validator: here wsaccel's, a byte-at-a-time DFA that runs at
about 14 MB/s - most of the client's CPU in the large-message cases (13.7.15:
10.5 s of 11.7 s; 9.1.*: 16 MiB messages).  FastUtf8Validator gives the
DFA's exact quad (valid?, endsOnCodePoint?, currentIndex, totalIndex) for
every chunk:

* while the input is valid, CPython's strict incremental UTF-8 decoder
  checks it (RFC 3629, as the DFA: no overlongs, no surrogates, nothing past
  U+10FFFF, no C0/C1/F5-FF) at C speed; the incomplete sequence it keeps
  back (at most 3 bytes) is put through the DFA too, so a prefix that can no
  longer become valid is caught in the same chunk as by the DFA;
* on the first chunk that is not valid, the DFA itself takes over: it is
  given the pending incomplete sequence (which alone fixes the DFA's state
  at the chunk's start, everything before it being complete code points)
  and then the chunk, and answers that chunk and every later one until
  reset(), its indexes moved to count from the message's start.

So a server that sends invalid UTF-8 fails a case exactly as before, at
the same octet.  `python3 fast_utf8.py [N]` compares both validators on N
random chunked inputs (valid and invalid) and exits 1 on any difference;
`make check-autobahn` runs it first.
"""
import codecs

from autobahn.websocket.utf8validator import Utf8Validator as DfaValidator


class FastUtf8Validator:
    __slots__ = ("_dec", "_total", "_dfa", "_base")

    def __init__(self):
        self.reset()

    def reset(self):
        self._dec = codecs.getincrementaldecoder("utf-8")("strict")
        self._total = 0      # bytes validated so far (all valid)
        self._dfa = None     # the DFA, once a chunk was not valid
        self._base = 0       # its index 0, counted from the message's start

    def validate(self, ba):
        if self._dfa is not None:
            r = self._dfa.validate(ba)
            return (r[0], r[1], r[2], self._base + r[3])
        pending = self._dec.getstate()[0]
        try:
            self._dec.decode(ba, False)
            tail = self._dec.getstate()[0]
            if not tail or DfaValidator().validate(tail)[0]:
                self._total += len(ba)
                return (True, not tail, len(ba), self._total)
        except UnicodeDecodeError:
            pass
        dfa = DfaValidator()
        dfa.validate(pending)
        r = dfa.validate(ba)
        self._dfa, self._base = dfa, self._total - len(pending)
        return (r[0], r[1], r[2], self._base + r[3])


def install():
    """The client's protocol (incoming text, close reasons) uses ours; the
    test cases' own vectors (case6_x_x) keep autobahn's."""
    import autobahn.websocket.protocol as protocol
    protocol.Utf8Validator = FastUtf8Validator


def selfcheck(trials, seed=1):
    import random
    rng = random.Random(seed)
    pieces = [b"a", b"\x00", b"\x7f", "\u00e9".encode(), "\u20ac".encode(),
              "\U0001d11e".encode(), "\U0010ffff".encode(), b"\xed\x9f\xbf", b"\xee\x80\x80",
              b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf",
              b"\xc2", b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
              b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5", b"\xfe", b"\xff", b"\xe1",
              b"\xe1\x80", b"\xf0\x90", b"\xf0\x90\x80", b"\xed", b"\xf4"]
    calls = 0
    for _ in range(trials):
        k = rng.randint(0, 12)
        if rng.random() < 0.5:
            data = b"".join(rng.choice(pieces) for _ in range(k))
        else:
            data = bytes(rng.randrange(256) for _ in range(k))
        if rng.random() < 0.3:
            data = b"x" * rng.randint(0, 5) + data
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 4)))
        chunks, last = [], 0
        for c in cuts + [len(data)]:
            chunks.append(data[last:c])
            last = c
        ref, fast = DfaValidator(), FastUtf8Validator()
        for _ in range(2):  # and again after reset()
            for ch in chunks:
                a, b = ref.validate(ch), fast.validate(ch)
                if a != b:
                    raise AssertionError(f"{data!r} in chunks {chunks!r}: at {ch!r} "
                                         f"the DFA says {a}, FastUtf8Validator {b}")
                calls += 1
            ref.reset()
            fast.reset()
    return calls


if __name__ == "__main__":
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    try:
        calls = selfcheck(n)
    except AssertionError as e:
        print(f"fast_utf8: DIFFERS: {e}")
        sys.exit(1)
    print(f"fast_utf8: same answers as {DfaValidator.__module__}.{DfaValidator.__name__} "
          f"on {n} inputs ({calls} chunks)")
