"""The adapter contract: one raw file in, canonical events + catalog + quarantine out.

Where it sits: raw shop files -> **adapters** -> canonical events / item
catalog (``pipelines/schema.py``) -> ``pipelines/ingest.py`` (dedup, merge,
reconcile) -> feature tables -> training sets.

An adapter never drops a row. Each data row of the file ends either as one
event (possibly a duplicate of another; ingest decides) or as one quarantine
row carrying the reason and the raw values, so that
``input_rows == len(events) + len(quarantine)`` for every file.

Extension point (STYLE.md section 6): subclass :class:`Adapter`, then pass its
dotted path (``"my_shop.adapters.MyAdapter"``) wherever an alias is accepted.
"""
from __future__ import annotations

import abc
import bz2
import csv
import gzip
import hashlib
import importlib
import io
import json
import lzma
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

import pandas as pd

from feature_repo import names as n
from pipelines.schema import conform_quarantine

ON_MALFORMED = ("fail", "quarantine")


class MalformedInputError(ValueError):
    """A raw file that cannot be read as its adapter's format.

    The message names the file, the column and, when it is about one value,
    the 1-based data row number (header excluded) and the value.

    Attributes:
        file: the input file.
        column: the offending column (None for a file-level problem).
        row: 1-based data row number, or None.
        value: the raw value that could not be parsed, or None.
    """

    def __init__(self, file: Path | str, column: str | None, row: int | None = None,
                 value: object = None, problem: str | None = None):
        self.file, self.column, self.row, self.value = str(file), column, row, value
        where = self.file
        if column is not None:
            where += f": column {column!r}"
        if row is not None:
            where += f", row {row}"
        if problem is None:
            problem = "empty value" if value == "" else f"cannot parse value {value!r}"
        super().__init__(f"{where}: {problem}")


@dataclass
class AdapterOutput:
    """What an adapter returns for one file.

    Attributes:
        events: accepted rows in the canonical event schema (duplicates included:
            ingest counts them).
        items: catalog rows (canonical item schema) for the items of ``events``.
        quarantine: rejected rows (quarantine schema), one per input row.
        input_rows: data rows in the file (header excluded).
    """

    events: pd.DataFrame
    items: pd.DataFrame
    quarantine: pd.DataFrame
    input_rows: int


class Adapter(abc.ABC):
    """Reads one raw file of a given format.

    Attributes:
        name: the adapter's alias; written to the events' ``source`` column
            and mixed into derived event ids.
    """

    name: str = "adapter"

    @abc.abstractmethod
    def read(self, path: Path, on_malformed: str) -> AdapterOutput:
        """Read one file.

        Args:
            path: the raw file.
            on_malformed: ``"fail"`` raises at the first value that cannot be
                parsed; ``"quarantine"`` quarantines such rows with the reason.

        Returns:
            Events, catalog and quarantine with ``input_rows == len(events) +
            len(quarantine)``.

        Raises:
            MalformedInputError: a required column is missing, or (with
                ``"fail"``) a value cannot be parsed.
        """


ADAPTERS: dict[str, str] = {
    "online_retail": "pipelines.adapters.online_retail.OnlineRetailAdapter",
    "retailrocket": "pipelines.adapters.retailrocket.RetailRocketAdapter",
    "rees46": "pipelines.adapters.rees46.Rees46Adapter",
    "canonical": "pipelines.adapters.canonical.CanonicalAdapter",
}


def get_adapter(name: str) -> Adapter:
    """An adapter instance from an alias or a dotted path.

    Args:
        name: a key of :data:`ADAPTERS` or ``"package.module.Class"``.

    Returns:
        A new instance of the adapter class.

    Raises:
        ValueError: the name is neither a known alias nor an importable class.
        TypeError: the class is not an :class:`Adapter`.
    """
    dotted = ADAPTERS.get(name, name)
    module_name, _, cls_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"unknown adapter {name!r}; expected one of {', '.join(ADAPTERS)} or a dotted path")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"adapter {name!r}: cannot import {dotted!r} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"adapter {name!r}: {dotted!r} is not a subclass of Adapter")
    return cls()


# --- helpers shared by the file formats ---------------------------------------------


#: `DataFrame.attrs` key of :func:`read_csv_strings`' per-row structure problems (a Series: text or None)
ROW_PROBLEMS = "row_problems"

#: openers by suffix (binary mode); any other suffix is read as plain text
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open(path: Path) -> IO[bytes]:
    return _OPENERS.get(Path(path).suffix.lower(), open)(path, "rb")


def read_csv_strings(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a CSV(.gz, .bz2, .xz) with every value kept as the exact string in the file, one row per line.

    A record is one line: a quoted field may hold commas but not a line break. Most files are read by
    pandas; where a line has more fields than the header or a quote runs over a line break (a stray
    quote in a description would otherwise swallow the lines up to the next quote into one row), the
    file is read again line by line and such lines come back as rows with a structure problem in
    ``df.attrs[ROW_PROBLEMS]`` (:class:`Triage` quarantines them, or stops a ``"fail"`` run at the first):
    ``"9 fields where the header has 8"`` (the extra values kept as ``_extra_1``, ...), ``"broken quoting
    (...)"`` (the whole line kept in the first column). A short line's missing fields read as empty.

    Args:
        path: the file; compression inferred from the suffix.
        required: columns that must be present (extra columns are kept).

    Returns:
        A frame of str values ("" for empty), index 0..n-1 = data row - 1 = line number - 2.

    Raises:
        MalformedInputError: the file cannot be read (not UTF-8, a truncated or corrupt archive), has no
            header, a header naming a column twice, or lacks a required column.
    """
    path = Path(path)
    try:
        try:
            # blank lines are kept (and quarantined by Triage) so row numbers stay line numbers - 1; no header
            # row for pandas: with one, a first data row longer than the header made its first column the index
            df = pd.read_csv(path, dtype=str, header=None, keep_default_na=False, skip_blank_lines=False,
                             encoding="utf-8-sig")
            by_line = len(df) != _physical_lines(path)  # a quoted field ran over a line break
        except pd.errors.ParserError:  # a line with more fields than the header
            by_line = True
        if by_line:
            df = _read_by_line(path)
        else:
            df = df.fillna("")
            df.columns = df.iloc[0].tolist()
            df = df.iloc[1:].reset_index(drop=True)
    except pd.errors.EmptyDataError:
        raise MalformedInputError(path, None, problem="empty file (no header row)") from None
    except UnicodeDecodeError as e:
        raise MalformedInputError(path, None, problem=f"not UTF-8 text: {e}") from None
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:  # truncated or corrupt archive, unreadable file
        raise MalformedInputError(path, None, problem=f"cannot read the file ({type(e).__name__}: {e})") from None
    header = [str(c) for c in df.columns]
    if not header or all(c == "" for c in header):
        raise MalformedInputError(path, None, problem="empty file (no header row)")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise MalformedInputError(path, None, problem=f"the header names {', '.join(map(repr, twice))} twice")
    require_columns(df, required, path)
    return df


def _physical_lines(path: Path) -> int:
    """Lines of the (decompressed) file: newlines, plus a last line without one."""
    count, last = 0, b"\n"
    with _open(path) as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _read_by_line(path: Path) -> pd.DataFrame:
    """:func:`read_csv_strings`' reading line by line (Python's csv module): a record that ran over a line
    break is read again one line at a time; lines with broken quoting or too many fields get a problem."""
    with _open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        lines: list[str] = []  # the lines of the record being read

        def source():
            for line in text:
                lines.append(line)
                yield line

        reader = csv.reader(source(), strict=True)
        records: list[tuple[list[str], str | None]] = []
        while True:
            lines.clear()
            try:
                record, problem = next(reader), None
            except StopIteration:
                break
            except csv.Error as e:
                record, problem = None, str(e)
            if record is not None and len(lines) == 1:
                records.append((record, None))
                continue
            for line in list(lines):  # a quote ran over a line break: each line on its own
                try:
                    records.append((next(csv.reader([line], strict=True), []), None))
                except csv.Error as e:
                    records.append(([line.rstrip("\r\n")], f"broken quoting ({e})"))
    if not records:
        raise pd.errors.EmptyDataError("no header row")
    header = records[0][0]
    m = len(header)
    extra = max((len(r) - m for r, _ in records[1:]), default=0)
    columns = header + [f"_extra_{i + 1}" for i in range(max(extra, 0))]
    rows, problems = [], []
    for record, problem in records[1:]:
        if record and len(record) > m and problem is None:
            problem = f"{len(record)} fields where the header has {m}"
        rows.append(record + [""] * (len(columns) - len(record)))
        problems.append(problem)
    df = pd.DataFrame(rows, columns=columns, dtype=object) if rows else pd.DataFrame(columns=columns, dtype=object)
    df.attrs[ROW_PROBLEMS] = pd.Series(problems, index=df.index, dtype=object)
    return df


def require_columns(df: pd.DataFrame, required: Sequence[str], path: Path) -> None:
    """Raise :class:`MalformedInputError` naming the first missing column."""
    for col in required:
        if col not in df.columns:
            found = ", ".join(map(str, df.columns))
            raise MalformedInputError(path, col, problem=f"missing required column (found: {found})")


def blank_to_null(values: pd.Series) -> pd.Series:
    """Empty strings as nulls (a text field left blank means unknown)."""
    return values.mask(values.eq(""))


def event_ids(raw: pd.DataFrame, columns: Sequence[str], adapter: str) -> pd.Series:
    """Deterministic event ids from the raw values of each row.

    sha1 of the adapter name and the row's values of ``columns`` joined by
    the unit separator (``\\x1f``), first 16 hex digits (64 bits). Identical raw
    rows get the same id, which is how ingest recognises duplicates, also
    across runs and across files.

    Args:
        raw: the string frame.
        columns: the format's own columns, in a fixed order (extra columns a
            sampler added must not change the id).
        adapter: adapter name.

    Returns:
        A str Series aligned with ``raw``.
    """
    values = zip(*(raw[c].astype(str).tolist() for c in columns))
    ids = [hashlib.sha1("\x1f".join((adapter, *row)).encode("utf-8")).hexdigest()[:16] for row in values]
    return pd.Series(ids, index=raw.index, dtype="string")


class Triage:
    """Gives each raw row at most one quarantine reason; the first rule that fires wins.

    Args:
        raw: the raw frame (index 0..n-1).
        path: the input file (its name is stored in the quarantine).
        on_malformed: ``"fail"`` or ``"quarantine"``.

    Raises:
        ValueError: ``on_malformed`` is not one of :data:`ON_MALFORMED`.
    """

    def __init__(self, raw: pd.DataFrame, path: Path, on_malformed: str):
        if on_malformed not in ON_MALFORMED:
            raise ValueError(f"on_malformed must be one of {ON_MALFORMED}, got {on_malformed!r}")
        self.raw, self.path, self.on_malformed = raw, Path(path), on_malformed
        self.reason = pd.Series(None, index=raw.index, dtype="object")
        # the earliest malformed row: (row index, column or None, the problem or None for an unparseable value)
        self._first_bad: tuple[int, str | None, str | None] | None = None
        # lines read_csv_strings could not split into the header's fields: quarantined, or the first stops "fail"
        problems = raw.attrs.get(ROW_PROBLEMS)
        if problems is not None and problems.notna().any():
            bad = problems.notna()
            first = int(bad.idxmax())
            self._first_bad = (first, None, str(problems[first]))
            self.flag(bad, problems.astype(str))
        # an empty line holds no value to parse: recorded, but never a reason to stop
        self.flag(raw.astype(str).eq("").all(axis=1), "blank line")

    @property
    def ok(self) -> pd.Series:
        """Mask of rows without a reason so far."""
        return self.reason.isna()

    def malformed(self, column: str, bad: pd.Series) -> None:
        """Mark rows whose ``column`` value cannot be parsed."""
        bad = bad & self.ok
        if bad.any():
            first = int(bad.idxmax())
            if self._first_bad is None or first < self._first_bad[0]:
                self._first_bad = (first, column, None)
        self.flag(bad, f"malformed {column}")

    def raise_if_failing(self) -> None:
        """With ``on_malformed="fail"``, raise for the earliest malformed row.

        Raises:
            MalformedInputError: naming file, column, 1-based row and value; or file, row and the problem
                for a line that does not split into the header's fields.
        """
        if self.on_malformed == "fail" and self._first_bad is not None:
            idx, col, problem = self._first_bad
            if col is None:
                raise MalformedInputError(self.path, None, idx + 1, problem=problem)
            raise MalformedInputError(self.path, col, idx + 1, self.raw.at[idx, col])

    def flag(self, mask: pd.Series, reason: str | pd.Series) -> None:
        """Quarantine rows of ``mask`` not yet quarantined, with ``reason`` (a str or per-row Series)."""
        mask = mask & self.ok
        if mask.any():
            self.reason[mask] = reason[mask] if isinstance(reason, pd.Series) else reason

    def quarantine(self) -> pd.DataFrame:
        """The quarantine frame: file name, 1-based row, reason, raw row as JSON."""
        rows = self.raw[~self.ok]
        cols = [str(c) for c in rows.columns]
        raw_json = [json.dumps(dict(zip(cols, vals)), ensure_ascii=False, default=str)
                    for vals in rows.itertuples(index=False)]
        return conform_quarantine(pd.DataFrame({
            n.SOURCE_FILE: self.path.name,
            n.SOURCE_ROW: rows.index.to_numpy() + 1,
            n.REASON: self.reason[~self.ok].astype(str).to_numpy(),
            n.RAW: raw_json,
        }))
