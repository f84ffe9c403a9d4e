"""How many times faster than real time `appliance simulate` runs, end to end.

Runs `appliance simulate --out DIR --quiet` as the README does (the whole leaflet programme,
average patient, session.wav, timeline and store on disk) as a fresh process, so process
start, phrase loading and writing the WAV all count, directly and with `--via-adc` (the
floor read through the MCP3xxx chip simulator, gpiozero, the ADC sampler and the probe).
Prints wall and CPU seconds and the factor over real time for each.

Goals (issue 19): >= 600x for the direct path; --via-adc within 3x of the direct path.

`--checkout DIR` measures another checkout of the project (e.g. main, for a before/after on
the same machine, back to back). Phrases are rendered once into a speech cache shared by
all runs (first run of a checkout), so only the simulation is timed.

    python bench/simulate_speed.py --runs 2
    python bench/simulate_speed.py --runs 2 --checkout ../main
    python bench/simulate_speed.py --runs 2 --no-adc --bytecode   # process start as installed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _session_s(out: Path) -> float:
    """The session's length from its timeline: the last event's session time."""
    last = 0.0
    with open(out / "timeline.jsonl", encoding="utf-8") as fh:
        for line in fh:
            last = max(last, float(json.loads(line)["t"]))
    return last


def run_once(checkout: Path, out: Path, cache: Path, *extra: str,
             pycache: Path | None = None) -> tuple[float, float, float]:
    """(wall s, CPU s, session s) of one `appliance simulate` process.

    `pycache`: the modules' bytecode is kept there between runs (as an installed package
    has it); None leaves the environment's choice (PYTHONDONTWRITEBYTECODE=1 here, so every
    process compiles the project's ~70 modules again: about 0.3 s of CPU).
    """
    env = {**os.environ, "PYTHONPATH": str(checkout), "XDG_CACHE_HOME": str(cache)}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    out.mkdir(parents=True, exist_ok=True)
    # The speech cache is the state directory's (STATE_DIR/cache/speech): share it between runs.
    speech = out / "cache" / "speech"
    if not speech.exists():
        speech.parent.mkdir(parents=True, exist_ok=True)
        speech.symlink_to(cache / "speech", target_is_directory=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "appliance.cli", "simulate", "--out", str(out), "--quiet", *extra],
                   env=env, check=True, stdout=subprocess.DEVNULL, cwd=checkout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, _session_s(out)


def _x(factor: float) -> str:
    return f"{factor:.0f}x" if factor >= 10 else f"{factor:.1f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs of each path (default 2)")
    ap.add_argument("--checkout", type=Path, default=HERE, help="the project checkout to measure")
    ap.add_argument("--no-adc", action="store_true", help="only the direct path")
    ap.add_argument("--programme", default=None,
                    help="another programme (e.g. postop, 3.9 min: a quicker --via-adc before/after)")
    ap.add_argument("--bytecode", action="store_true",
                    help="keep compiled bytecode between runs, as an installed package does (in a temporary "
                         "PYTHONPYCACHEPREFIX, not in the checkout)")
    args = ap.parse_args()
    checkout = args.checkout.resolve()
    programme = ("--programme", args.programme) if args.programme else ()
    paths = [("direct", programme)]
    if not args.no_adc:
        paths.append(("--via-adc", ("--via-adc", *programme)))
    with tempfile.TemporaryDirectory(prefix="simulate-speed-") as tmp:
        cache = Path(tmp) / "xdg"
        (cache / "speech").mkdir(parents=True)
        pycache = Path(tmp) / "pycache" if args.bytecode else None
        # First, render the phrases into the shared cache (not timed); with --bytecode this
        # also compiles the modules once.
        run_once(checkout, Path(tmp) / "warm", cache, "--programme", str(HERE / "tests/data/short_programme.toml"),
                 pycache=pycache)
        walls: dict[str, float] = {}
        cpus: dict[str, float] = {}
        for name, extra in paths:
            runs, cpu_runs = [], []
            for i in range(args.runs):
                wall, cpu, session = run_once(checkout, Path(tmp) / f"{name.strip('-')}{i}", cache, *extra,
                                              pycache=pycache)
                runs.append(wall)
                cpu_runs.append(cpu)
                print(f"{name:9s} run {i}: {session / 60:.1f} min of session in {wall:.1f} s wall "
                      f"({cpu:.1f} s CPU): {_x(session / wall)} real time wall, {_x(session / cpu)} per CPU second",
                      flush=True)
            walls[name], cpus[name] = statistics.median(runs), statistics.median(cpu_runs)
            print(f"{name:9s} median {walls[name]:.1f} s wall, {cpus[name]:.1f} s CPU: {_x(session / walls[name])} "
                  f"real time ({_x(session / cpus[name])} per CPU second; a shared machine's wall time includes "
                  f"waiting) (goal: {'>= 600x' if name == 'direct' else '<= 3x the direct path'})", flush=True)
        if "--via-adc" in walls:
            print(f"--via-adc / direct: {walls['--via-adc'] / walls['direct']:.1f}x wall, "
                  f"{cpus['--via-adc'] / cpus['direct']:.1f}x CPU (goal <= 3x)")
    print(f"checkout: {checkout}; bytecode {'kept between runs' if args.bytecode else 'as the environment says'}")


if __name__ == "__main__":
    main()
