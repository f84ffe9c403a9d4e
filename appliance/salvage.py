"""What is left of a damaged database: every row that can still be read, table by table.

`salvage(path)` never raises and never writes the file: it reads a copy through SQLite
(row by row, stepping over damaged pages) and then the table-leaf pages SQLite can no
longer reach (appliance.sqlite_pages). The clinic's status, export and wipe use it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appliance.store import REP_METRICS, SCHEMA, UNREADABLE, diagnose, expected_columns, file_problem

log = logging.getLogger(__name__)

SALVAGE_MAX_GAP = 1 << 16  # rowids point-read one by one across one damaged stretch
SALVAGE_MAX_JUMP = 1 << 24  # how far past a damaged stretch a table is searched for more rows
SALVAGE_MISS_RUN = 2048  # rowids missing in a row (several pages' worth) after which a lost table end is given up


@dataclass(frozen=True)
class Salvaged:
    """What could be read from a database file, table by table, row by row.

    `rows` holds only rows that fit this version's schema (types, NOT NULL, readable
    timestamps and event data), so the clinic's tables and report can be made from them.
    """

    path: Path
    damage: str | None  # why Store(path) refuses the file; None when it is usable
    rows: dict[str, tuple[dict[str, Any], ...]]
    read_errors: dict[str, int]  # damaged stretches met while reading each table
    rejected: dict[str, int]  # rows read but unusable (wrong type, missing value)
    missing_tables: tuple[str, ...]
    from_pages: dict[str, int] = field(default_factory=dict)  # rows only found by reading leaf pages directly

    @property
    def sessions(self) -> list[dict[str, Any]]:
        return list(self.rows.get("sessions", ()))

    @property
    def repetitions(self) -> list[dict[str, Any]]:
        return list(self.rows.get("repetitions", ()))

    def count(self, table: str) -> int:
        return len(self.rows.get(table, ()))

    def describe(self) -> str:
        """One sentence for the clinic: what was recovered."""
        parts = [f"{self.count('sessions')} sessions", f"{self.count('repetitions')} repetitions",
                 f"{self.count('events')} events", f"{self.count('samples')} pressure samples"]
        text = "recovered " + ", ".join(parts)
        if sum(self.from_pages.values()):
            text += f" ({sum(self.from_pages.values())} rows from pages SQLite could no longer reach)"
        lost = sorted({t for t, n in self.read_errors.items() if n} | {t for t, n in self.rejected.items() if n}
                      | set(self.missing_tables))
        if lost:
            text += f"; rows are missing from {', '.join(lost)}"
        return text

    def _stand_in_sessions(self) -> list[dict[str, Any]]:
        """Sessions whose row was lost but whose repetitions were read: so the export keeps them."""
        known = {s["id"] for s in self.rows.get("sessions", ())}
        first: dict[int, str] = {}
        for r in self.rows.get("repetitions", ()):
            if r["session_id"] not in known:
                first[r["session_id"]] = min(first.get(r["session_id"], r["ended_utc"]), r["ended_utc"])
        return [{"id": sid, "started_utc": when, "status": "lost", "programme": "unknown", "lang": "",
                 "source": "salvage"} for sid, when in sorted(first.items())]

    def write_database(self, dest: str | Path) -> Path:
        """A fresh database with this version's schema holding the salvaged rows (for export)."""
        dest = Path(dest)
        db = sqlite3.connect(dest, isolation_level=None)
        try:
            db.executescript(SCHEMA)
            db.execute("BEGIN")
            for row in self._stand_in_sessions():
                db.execute("INSERT INTO sessions(id, started_utc, status, programme, lang, source)"
                           " VALUES (:id, :started_utc, :status, :programme, :lang, :source)", row)
            for table, rows in self.rows.items():
                for row in rows:
                    cols = ", ".join(f'"{c}"' for c in row)
                    db.execute(f'INSERT OR IGNORE INTO "{table}" ({cols}) VALUES ({",".join("?" * len(row))})',
                               tuple(row.values()))
            db.execute("COMMIT")
        finally:
            db.close()
        return dest


@functools.cache
def _column_rules() -> dict[str, dict[str, tuple[str, bool]]]:
    """table -> column -> (declared type, NOT NULL), from this version's schema."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(SCHEMA)
        return {t: {r[1]: (r[2].upper(), bool(r[3]) or bool(r[5])) for r in mem.execute(f'PRAGMA table_info("{t}")')}
                for t in expected_columns()}
    finally:
        mem.close()


def _fits(table: str, row: dict[str, Any]) -> bool:
    """A salvaged row this version can use: right types, required values present, readable text."""
    rules = _column_rules()[table]
    for column, (kind, required) in rules.items():
        value = row.get(column)
        if value is None:
            if required:
                return False
            continue
        if kind == "TEXT" and not isinstance(value, str):
            return False
        if kind == "INTEGER" and not isinstance(value, int):
            return False
        if kind == "REAL" and (not isinstance(value, int | float) or value != value):
            return False
        if column.endswith("_utc"):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return False
    if table == "events":
        try:
            return isinstance(json.loads(row["data"]), dict)
        except ValueError:
            return False
    return True


def _pad_truncated(copy: Path) -> None:
    """Give a truncated copy back the length its header claims, as zero pages.

    SQLite refuses a file shorter than its header says; padded, the lost pages read as
    damaged pages (stepped over) and every page before the cut can be read.
    """
    with copy.open("r+b") as fh:
        header = fh.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
            return
        (page_size,) = struct.unpack(">H", header[16:18])
        page_size = 65536 if page_size == 1 else page_size
        (pages,) = struct.unpack(">I", header[28:32])
        size = fh.seek(0, os.SEEK_END)
        claimed = pages * page_size
        if size < claimed <= 1 << 32:
            # A page cut part-way keeps its header but loses the cells at its end: it could
            # yield rows half made of zeros. It goes whole, so it reads as a damaged page.
            fh.truncate(size - size % page_size)
            fh.truncate(claimed)  # sparse: no disk used for the zeros


def _open_copy(path: Path, workdir: Path) -> sqlite3.Connection:
    """A connection to a copy of the file and its WAL (the last repetitions may be only there)."""
    copy = workdir / "salvage.db"
    shutil.copyfile(path, copy)
    _pad_truncated(copy)
    wal = Path(f"{path}-wal")
    if wal.is_file() and not wal.is_symlink():
        shutil.copyfile(wal, Path(f"{copy}-wal"))
    return sqlite3.connect(copy, isolation_level=None)


def _read_table(db: sqlite3.Connection, table: str, columns: list[str]) -> tuple[dict[int, tuple], int]:
    """Rows by rowid, skipping damaged stretches of the B-tree; returns (rows, stretches skipped)."""
    select = f'SELECT rowid, {", ".join(chr(34) + c + chr(34) for c in columns)} FROM "{table}"'  # noqa: S608
    rows: dict[int, tuple] = {}
    errors = 0
    start = -(1 << 63)
    while True:
        try:
            for r in db.execute(select + " WHERE rowid >= ? ORDER BY rowid", (start,)):
                if r[0] >= start:
                    rows[r[0]] = r[1:]
                    start = r[0] + 1
            return rows, errors
        except UNREADABLE:
            errors += 1
        # Find where the table can be read again, then point-read the rows in between.
        jump, resume = 1, None
        while jump <= SALVAGE_MAX_JUMP and start + jump < (1 << 63):
            try:
                first = db.execute(select + " WHERE rowid >= ? ORDER BY rowid LIMIT 1", (start + jump,)).fetchone()
            except UNREADABLE:
                jump *= 2
                continue
            resume = max(first[0], start + jump) if first else start + jump  # damaged keys never go back
            break
        end = resume if resume is not None else start + SALVAGE_MAX_GAP
        misses = 0
        for rowid in range(start, min(end, start + SALVAGE_MAX_GAP)):
            try:
                got = db.execute(select + " WHERE rowid = ?", (rowid,)).fetchone()
            except UNREADABLE:
                got = None
            if got:
                rows[rowid] = got[1:]
                misses = 0
                continue
            misses += 1
            if resume is None and misses >= SALVAGE_MISS_RUN:
                break  # the end of the table is lost: a run of missing rows longer than pages hold
        if resume is None:
            return rows, errors
        start = resume


def salvage(path: str | Path) -> Salvaged:
    """Read every row that is still readable from a (damaged) database; never raises.

    Read-only for the file itself: the file and its WAL are copied to a temporary folder
    and read there (when even that fails, the file is read in place, read-only). Each of
    this version's tables is read row by row by rowid, stepping over damaged pages.
    """
    path = Path(path)
    damage = diagnose(path)
    empty = Salvaged(path, damage.reason if damage else None, {}, {}, {}, tuple(expected_columns()))
    if file_problem(path) or not path.is_file():
        return empty
    rows: dict[str, tuple[dict[str, Any], ...]] = {}
    read_errors: dict[str, int] = {}
    rejected: dict[str, int] = {}
    missing: list[str] = []
    from_pages: dict[str, int] = {}
    seen: dict[str, set[int]] = {}  # rowids SQLite itself returned, table by table
    with tempfile.TemporaryDirectory(prefix="appliance-salvage-") as tmp:
        source = Path(tmp) / "salvage.db"
        try:
            db = _open_copy(path, Path(tmp))
        except (OSError, *UNREADABLE) as exc:
            source = path
            log.warning("cannot copy %s for salvage (%s); reading it in place", path, exc)
            try:
                db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
            except UNREADABLE:
                return empty
        try:
            for table, wanted in expected_columns().items():
                try:
                    have = {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}
                except UNREADABLE:
                    have = set()
                columns = [c for c in wanted if c in have]
                if not columns:
                    missing.append(table)
                    continue
                try:
                    found, errors = _read_table(db, table, columns)
                except UNREADABLE:  # e.g. a WITHOUT ROWID table of a foreign schema
                    found, errors = {}, 1
                usable = []
                for values in found.values():
                    row = dict(zip(columns, values, strict=True))
                    if _fits(table, row):
                        usable.append(row)
                rows[table] = tuple(usable)
                seen[table] = set(found)
                read_errors[table] = errors
                rejected[table] = len(found) - len(usable)
            if damage is not None:
                from_pages = _add_leaf_rows(source, rows, seen)
        finally:
            db.close()
    return Salvaged(path, damage.reason if damage else None, rows, read_errors, rejected, tuple(missing),
                    from_pages)


def _add_leaf_rows(source: Path, rows: dict[str, tuple[dict[str, Any], ...]],
                   seen: dict[str, set[int]]) -> dict[str, int]:
    """Rows on table-leaf pages that SQLite could not reach, added where their rowid is new.

    A leaf does not say which table it belongs to: a record is taken for the table whose
    column count it has (an older repetition has fewer metrics) and whose rules it fits.
    """
    from appliance.sqlite_pages import leaf_rows

    tables = expected_columns()
    keys = {t: set(seen.get(t, ())) for t in tables}
    added: dict[str, list[dict[str, Any]]] = {t: [] for t in tables}
    first_metric = tables["repetitions"].index(REP_METRICS[0])
    by_count: dict[int, list[str]] = {}
    for t, cols in tables.items():
        by_count.setdefault(len(cols), []).append(t)
    for n in range(first_metric, len(tables["repetitions"])):
        by_count.setdefault(n, []).append("repetitions")

    def wanted(columns: int, rowid: int) -> bool:
        return any(rowid not in keys[t] for t in by_count.get(columns, ()))

    def wanted_page(columns: int, first: int, last: int) -> bool:
        """A page whose every rowid SQLite already returned is not read again."""
        if not 0 <= last - first < 65536:
            return True
        return any(not all(r in keys[t] for r in range(first, last + 1)) for t in by_count.get(columns, ()))

    try:
        for leaf in leaf_rows(source, wanted, wanted_page):
            for table in by_count.get(len(leaf.values), ()):
                row = dict.fromkeys(tables[table])
                row.update(zip(tables[table], leaf.values, strict=False))
                ipk = _integer_key(table)
                if ipk is not None and row[ipk] is None:
                    row[ipk] = leaf.rowid
                if leaf.rowid in keys[table] or not _fits(table, row):
                    continue
                keys[table].add(leaf.rowid)
                added[table].append(row)
                break
    except OSError as exc:
        log.warning("cannot read the pages of %s: %s", source, exc)
    for table, new in added.items():
        if new:
            rows[table] = rows.get(table, ()) + tuple(new)
    return {t: len(v) for t, v in added.items() if v}


@functools.cache
def _integer_key(table: str) -> str | None:
    """The INTEGER PRIMARY KEY column (the rowid itself), if the table has one."""
    keys = [c for c, (kind, _) in _column_rules()[table].items() if kind == "INTEGER" and _is_pk(table, c)]
    return keys[0] if keys else None


@functools.cache
def _is_pk(table: str, column: str) -> bool:
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(SCHEMA)
        return any(r[1] == column and r[5] for r in mem.execute(f'PRAGMA table_info("{table}")'))
    finally:
        mem.close()
