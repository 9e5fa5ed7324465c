"""Helpers shared by the benchmark scripts in scripts/bench/ (they run as
`python3 scripts/bench/NAME.py`, so this directory is on their path and
`from benchlib import free_port` finds it).  Run as a program it prints a
free port, for the shell scripts."""
import socket


def free_port():
    """A loopback TCP port free right now (the kernel's pick)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


if __name__ == "__main__":
    print(free_port())
