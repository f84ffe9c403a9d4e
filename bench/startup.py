"""Process start -> ready: how long `appliance run` takes until it tells systemd READY=1.

Measured as systemd sees it: the benchmark spawns the command with its own
$NOTIFY_SOCKET and times the READY=1 datagram (the appliance sends it right after the
ready phrase is queued to the speaker). Cold = empty speech cache (first boot after
install); warm = cache filled by an earlier start. Prints one line per case, e.g.

    startup simulated warm: median 0.95 s, max 1.02 s (n=5)

Target on a Pi 3 / Zero 2 W: ready spoken <= 15 s after the service starts.
Usage: .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_SNIPPET = "import sys; from appliance.cli import main; sys.exit(main())"


def time_to_ready(state_dir: Path, extra: list[str], timeout: float = 120.0) -> float:
    sock_dir = Path(tempfile.mkdtemp(prefix="startup-"))
    sock_path = sock_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(timeout)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    start = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", RUN_SNIPPET, "run", "--state-dir", str(state_dir), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            fields = sock.recv(4096).decode().split("\n")
            if "READY=1" in fields:
                return time.monotonic() - start
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "simulated": ["--simulated"],
        "device-path": ["--config", str(REPO / "examples" / "appliance.toml")],
    }
    for name, extra in cases.items():
        cold, warm = [], []
        for _ in range(args.runs):
            state = Path(tempfile.mkdtemp(prefix="startup-state-"))
            cold.append(time_to_ready(state, extra))
            warm.append(time_to_ready(state, extra))
        for label, values in (("cold", cold), ("warm", warm)):
            print(f"startup {name} {label}: median {statistics.median(values):.2f} s, "
                  f"max {max(values):.2f} s (n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
