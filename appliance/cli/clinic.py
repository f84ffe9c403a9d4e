"""`appliance clinic enroll|status|export|report|wipe|pair|stick`: the clinic's commands."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from appliance.cli.common import UserError, add_common_args, check_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clinic", help="enroll a patient, status, export, report, wipe",
                       description="The clinic's side of lending the device to one patient at a time.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("enroll", help="install a patient's prescription.toml (refused while another "
                                          "patient's data is on the device)")
    add_common_args(a)
    a.add_argument("prescription", type=Path, metavar="FILE", help="the prescription (see examples/prescription.toml)")
    a.set_defaults(func=run_enroll)

    a = actions.add_parser("status", help="who is enrolled (code only), since when, sessions, storage")
    add_common_args(a)
    a.set_defaults(func=run_status)

    a = actions.add_parser("export", help="write CSV, FHIR and the report for the clinic into DIR")
    add_common_args(a)
    a.add_argument("--out", type=Path, required=True, metavar="DIR")
    a.add_argument("--no-report", action="store_true", help="tables only (faster)")
    a.add_argument("--lang", choices=("nl", "en"), default=None,
                   help="the report's language (default: the prescription's)")
    a.set_defaults(func=run_export)

    a = actions.add_parser("report", help="the physiotherapist's report: PDF, PNG pages, CSV, FHIR JSON")
    add_common_args(a)
    a.add_argument("--out", type=Path, required=True, metavar="DIR")
    a.add_argument("--lang", choices=("nl", "en"), default=None,
                   help="the report's language (default: the prescription's)")
    a.set_defaults(func=run_report)

    a = actions.add_parser("wipe", help="remove every trace of the patient and prove it by a byte scan")
    add_common_args(a)
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    a.set_defaults(func=run_wipe)

    a = actions.add_parser("pair", help="pair the device with the clinic's USB key (at install)")
    add_common_args(a)
    a.add_argument("stick", type=Path, metavar="DIR", help="the mounted clinic stick (a new key is "
                                                          "written if it has none)")
    a.set_defaults(func=run_pair)

    a = actions.add_parser("stick", help="handle a plugged-in stick (udev/systemd call this)")
    add_common_args(a)
    a.add_argument("stick", type=Path, metavar="DIR", help="where the stick is mounted")
    a.set_defaults(func=run_stick)


def _refusal(fn):
    def wrapped(args):
        from appliance.clinic.enrolment import ClinicRefusal

        try:
            return fn(args)
        except ClinicRefusal as exc:
            raise UserError(str(exc)) from None
    return wrapped


@_refusal
def run_enroll(args: argparse.Namespace) -> int:
    from appliance.clinic.enrolment import enroll

    e = enroll(args.state_dir, args.prescription)
    print(f"enrolled {e.code} (since {e.since_utc:%Y-%m-%d %H:%M} UTC); prescription in {args.state_dir}")
    return 0


@_refusal
def run_status(args: argparse.Namespace) -> int:
    from appliance.clinic.enrolment import status

    for line in status(args.state_dir).lines():
        print(line)
    return 0


@_refusal
def run_export(args: argparse.Namespace) -> int:
    from appliance.clinic.enrolment import DAMAGE_NOTE_FILE, export

    check_dir(args.out, "--out")
    files = export(args.state_dir, args.out, with_report=not args.no_report, lang=args.lang)
    print(f"exported {len(files)} files to {files[0].parent}")
    for f in files:
        print(f"  {f.name}")
    damaged = [f for f in files if f.name == DAMAGE_NOTE_FILE]
    if damaged:  # the one sentence: what was damaged, how many rows were recovered
        print(damaged[0].read_text(encoding="utf-8").strip(), file=sys.stderr)
    return 0


@_refusal
def run_report(args: argparse.Namespace) -> int:
    from appliance.clinic import report, tables
    from appliance.clinic.enrolment import current_enrolment, current_prescription, db_path
    from appliance.clinic.summary import summarise

    enrolment = current_enrolment(args.state_dir)
    if enrolment is None:
        raise UserError(f"no patient is enrolled in {args.state_dir}; nothing to report")
    if not db_path(args.state_dir).exists():
        raise UserError(f"no sessions stored in {args.state_dir} yet")
    check_dir(args.out, "--out")
    rx = current_prescription(args.state_dir)
    enrolled = enrolment.since_utc.astimezone(rx.tz).date() if rx else enrolment.since_utc.date()
    try:
        summary = summarise(db_path(args.state_dir), enrolment.code, rx, args.lang, enrolled)  # read once for both
        files = tables.write_tables(db_path(args.state_dir), args.out, enrolment.code, rx, summary=summary)
        files += report.write_report(db_path(args.state_dir), args.out, enrolment.code, rx, summary=summary)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for f in files:
        print(f)
    return 0


@_refusal
def run_wipe(args: argparse.Namespace) -> int:
    from appliance.clinic.enrolment import status, wipe

    st = status(args.state_dir)
    who = st.code or "an unenrolled patient"
    if not args.yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise UserError("there is no terminal to confirm the wipe on; run it from a terminal, "
                            "or add --yes to wipe without asking")
        try:
            answer = input(f"wipe every trace of {who} ({st.sessions} sessions) from {args.state_dir}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing wiped")
            return 1
    rep = wipe(args.state_dir)
    for line in rep.lines():
        print(line)
    return 0 if rep.clean else 1


@_refusal
def run_pair(args: argparse.Namespace) -> int:
    from appliance.clinic.usbstick import pair

    if not Path(args.stick).is_dir():
        raise UserError(f"{args.stick} is not a folder; give the folder where the clinic stick is mounted")
    try:
        print(pair(args.state_dir, args.stick))
    except UnicodeDecodeError:
        raise UserError(f"{Path(args.stick) / 'appliance-clinic.key'} is not a text key file "
                        "(not UTF-8); copy the clinic's key file again") from None
    except OSError as exc:
        raise UserError(f"{exc.filename or args.stick}: cannot pair ({exc.strerror})") from None
    return 0


@_refusal
def run_stick(args: argparse.Namespace) -> int:
    from appliance.clinic.usbstick import handle_stick

    outcome = handle_stick(args.stick, args.state_dir, now=datetime.now(UTC))
    print(f"{outcome.action.value}: {outcome.detail} (says {outcome.phrase or 'nothing'})", file=sys.stdout)
    if outcome.phrase:
        from appliance.device.service import post_announcement

        # The running appliance holds the speaker; it says the outcome within a second.
        post_announcement(args.state_dir, outcome.phrase)
    return 0
