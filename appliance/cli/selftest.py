"""`appliance selftest`: is this unit fit to coach? Speaker, microphone, voice model, probe,
ADC rate, disk, and (only with --stim, into a test load) the stimulation line.

Prints one line per check and speaks the verdict; exits 1 if any check FAILs. The checks
live in `appliance.device.selftest`.
"""

from __future__ import annotations

import argparse

from appliance.cli.common import add_common_args, device_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selftest",
        help="check speaker, microphone, probe, ADC, disk (and the stim line with --stim)",
        description="Check that this unit can coach. Exit status 1 if any check fails.",
    )
    add_common_args(p)
    p.add_argument("--simulated", action="store_true",
                   help="check through the simulated edges (CI, a laptop)")
    p.add_argument("--stim", action="store_true",
                   help="also pulse the stimulation line (connect the test load first!)")
    p.add_argument("--quiet", action="store_true", help="do not speak the results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.device.selftest import SelfTest, Status

    config = device_config(args)  # a refused configuration ends here, in one sentence
    checker = SelfTest(config, args.state_dir, simulated=args.simulated)
    try:
        results = checker.run_all(stim=args.stim)
        print(f"appliance selftest ({'simulated' if args.simulated else 'device'}, "
              f"configuration {config.source})")
        for r in results:
            print("  " + r.line())
        failed = [r.name for r in results if r.status is Status.FAIL]
        print("result: " + ("FAIL (" + ", ".join(failed) + ")" if failed else "ok"))
        if not args.quiet:
            checker.speak("selftest.failed" if failed else "selftest.passed")
    finally:
        checker.close()
    return 1 if failed else 0
