"""The real server for Python tests: a free port, `seenn serve` started with the given arguments, and
a wait for /readyz. Tests import it with `sys.path.insert(0, str(tests / "helpers"))`."""

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "target" / "release" / "seenn"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log=subprocess.DEVNULL, timeout_s: float = 90) -> dict:
    """Starts `seenn serve` on free loopback ports with `args` and waits until it is ready."""
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([str(BIN), "serve", "--host", "127.0.0.1", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port), *args],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, "server exited before it was ready"
        assert time.time() < deadline, "server not ready"
        time.sleep(0.2)
    return {"proc": proc, "base": base, "port": http_port, "http": f"127.0.0.1:{http_port}",
            "grpc": f"127.0.0.1:{grpc_port}"}


def stop(server: dict) -> None:
    server["proc"].terminate()
    server["proc"].wait(timeout=30)
