"""A small file system for the full-disk and full-stick tests, without root or loop devices.

`unshare -rm` gives the test a private mount namespace (a user namespace maps us to root
in it), where a tmpfs of a few hundred KiB can be mounted. The code under test runs in
that namespace as a child Python process and reports what it saw as JSON on its last line.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PRELUDE = '''
import json, os, subprocess, sys
from pathlib import Path
MP = Path(sys.argv[1])

def mount(size_kib):
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(MP)], check=True)

def read_only():
    subprocess.run(["mount", "-o", "remount,ro", str(MP)], check=True)

def fill_disk(leave_kib=0, name="filler"):
    """Fill the file system, then give `leave_kib` back."""
    path = MP / name
    with path.open("wb", buffering=0) as fh:
        block = b"\\xa5" * 4096
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
    size = path.stat().st_size
    os.truncate(path, max(0, size - leave_kib * 1024))
    return os.statvfs(MP).f_bavail * os.statvfs(MP).f_frsize

def report(**values):
    print(json.dumps(values, default=str))
'''


@functools.cache
def unavailable() -> str | None:
    """Why a small file system cannot be had here (None when it can)."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "unshare or mount missing"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no private tmpfs (unshare -rm: {probe.stderr.strip()[:120]})"
    return None


def run(mountpoint: Path, code: str, timeout: float = 240) -> dict[str, Any]:
    """Run `code` (after PRELUDE: mount(), read_only(), fill_disk(), report()) in its own namespace."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = mountpoint.parent / f"{mountpoint.name}-script.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(["unshare", "-rm", sys.executable, str(script), str(mountpoint)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
