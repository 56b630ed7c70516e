"""Ports for the test suites' multi-process groups (no dependencies, so
that the emulation drivers of tests/emu can import it as well as the
pytest suites)."""
import random
import socket


def port_pair() -> int:
    """A port P that is free with its neighbour P + 1 (a group's control
    port and its ranks' comm_tcp port), both below Linux's ephemeral range
    (32768 and up): there no client socket of the run (HTTP, the nodes'
    own connections) can take P + 1 between this check and the listen."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports below 32000")
