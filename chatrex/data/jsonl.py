"""Reading and writing records as JSON Lines (one record per line, UTF-8).

:func:`read_records` streams a file and raises :class:`RecordError` naming the file, the line number
and the problem (bad JSON, schema errors, a missing image file). It yields plain dicts (the JSON
objects as written); build :class:`chatrex.data.schema.Record` objects with ``Record.from_dict`` when
typed access is wanted. Image paths in records are relative to the JSONL file's folder
(:func:`resolve_image_path`).

Training sets can be large (Rexverse-2M has two million records): :class:`JsonlRecords` indexes the
records of JSONL files by byte offset (14 bytes a record, in numpy arrays) and parses a record only when
it is read, so that neither the process nor each of its DataLoader workers holds the records as Python
objects.
"""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from chatrex.data.schema import Record, validate_record
from chatrex.utils.atomic import open_atomic

PathLike = Union[str, os.PathLike]


class RecordError(ValueError):
    """A record in a JSONL file is unusable. ``path`` and ``line`` (1-based) say where."""

    def __init__(self, path: PathLike, line: int, problem: str):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")


def _as_dict(record: Union[Mapping[str, Any], Record]) -> dict:
    if isinstance(record, Record):
        return record.to_dict()
    if isinstance(record, Mapping):
        return dict(record)
    raise TypeError(f"a record must be a dict or chatrex.data.schema.Record, got {type(record).__name__}")


def dumps_record(record: Union[Mapping[str, Any], Record]) -> str:
    """One record as a single JSON line (no trailing newline)."""
    return json.dumps(_as_dict(record), ensure_ascii=False, separators=(",", ":"))


def write_records(path: PathLike, records: Iterable[Union[Mapping[str, Any], Record]], validate: bool = False) -> int:
    """Write ``records`` to ``path`` (atomically: a temporary file, ``fsync``-ed and renamed at the end).

    Args:
        path: output ``.jsonl`` file; its folder is created.
        records: dicts or :class:`Record` objects.
        validate: check each record first and raise :class:`RecordError` (line = record number) on
            the first invalid one; nothing is written then.

    Returns:
        The number of records written.
    """
    path = Path(path)
    n = 0
    with open_atomic(path, "w", encoding="utf-8") as f:
        for n, record in enumerate(records, start=1):
            d = _as_dict(record)
            if validate:
                errors = validate_record(d)
                if errors:
                    raise RecordError(path, n, "; ".join(errors))
            f.write(dumps_record(d))
            f.write("\n")
    return n


def resolve_image_path(record: Union[Mapping[str, Any], Record], jsonl_path: PathLike) -> Path:
    """The image file of ``record``: its ``image`` if absolute, else relative to the JSONL's folder."""
    image = record.image if isinstance(record, Record) else record.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"record {getattr(record, 'id', None) or record.get('id')!r} has no 'image' path")
    p = Path(image)
    return p if p.is_absolute() else Path(jsonl_path).parent / p


def read_records(path: PathLike, validate: bool = True, check_images: bool = False) -> Iterator[dict]:
    """Stream the records of a JSONL file as dicts.

    Blank lines are skipped. Raises :class:`RecordError` (``path:line: problem``) on a line that is not
    JSON, not an object, or (with ``validate``) breaks the schema; with ``check_images`` also when the
    record's image file does not exist. Raises ``FileNotFoundError`` if ``path`` is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no JSONL file at {path}")
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(path, lineno, f"bad JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(d, dict):
                raise RecordError(path, lineno, f"expected a JSON object, got {type(d).__name__}")
            if validate:
                errors = validate_record(d)
                if errors:
                    raise RecordError(path, lineno, f"record {d.get('id')!r}: " + "; ".join(errors))
            if check_images:
                try:
                    image = resolve_image_path(d, path)
                except ValueError as e:
                    raise RecordError(path, lineno, str(e)) from None
                if not image.is_file():
                    raise RecordError(path, lineno, f"record {d.get('id')!r}: image file not found: {image}")
            yield d


def count_records(path: PathLike) -> int:
    """Number of non-blank lines (records) in a JSONL file, without parsing them."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n


class JsonlRecords(Sequence):
    """The records of JSONL files as a sequence of ``(record dict, image path)``, read from disk on access.

    Building it reads every file once, line by line, and checks that each non-blank line is a JSON object
    (:class:`RecordError` with ``path:line`` otherwise); it keeps, per record, the file, the line's byte
    offset and its line number (numpy arrays: 14 bytes a record, shared by forked DataLoader workers
    without copies). ``records[i]`` reads record ``i``'s bytes with ``os.pread`` from a descriptor each
    process opens once (no shared file position, so forked workers may share it) and parses them;
    iterating reads each file in order.
    """

    def __init__(self, files: Iterable[PathLike]) -> None:
        self.files = [Path(f) for f in files]
        if len(self.files) > np.iinfo(np.int16).max:
            raise ValueError(f"at most {np.iinfo(np.int16).max} JSONL files, got {len(self.files)}")
        offsets, lines, which = array("q"), array("i"), array("h")
        self._sizes: list[int] = []
        for k, path in enumerate(self.files):
            if not path.is_file():
                raise FileNotFoundError(f"no JSONL file at {path}")
            offset = 0
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        _parse_object(line, path, lineno)
                        offsets.append(offset)
                        lines.append(lineno)
                        which.append(k)
                    offset += len(line)
            self._sizes.append(offset)
        self._offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self._lines = np.frombuffer(lines, dtype=np.int32).copy()
        self._files = np.frombuffer(which, dtype=np.int16).copy()
        self._fds: dict[int, int] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not travel to another process
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptors this object opened (they are opened again when needed)."""
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def _read(self, k: int, offset: int, size: int) -> bytes:
        if not hasattr(os, "pread"):  # Windows
            with open(self.files[k], "rb") as f:
                f.seek(offset)
                return f.read(size)
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.files[k], os.O_RDONLY)
        return os.pread(fd, size, offset)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> tuple[dict, Path]:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"JsonlRecords indices must be integers, got {type(index).__name__}")
        n = len(self._offsets)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"record {index} of {n}")
        k, start = int(self._files[i]), int(self._offsets[i])
        end = int(self._offsets[i + 1]) if i + 1 < n and self._files[i + 1] == k else self._sizes[k]
        path = self.files[k]
        line = self._read(k, start, end - start)  # the record's line (and any blank lines after it)
        record = _parse_object(line, path, int(self._lines[i]), "the file changed after it was indexed: ")
        return record, resolve_image_path(record, path)

    def __iter__(self) -> Iterator[tuple[dict, Path]]:
        for path in self.files:
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        record = _parse_object(line, path, lineno)
                        yield record, resolve_image_path(record, path)

    def nbytes(self) -> int:
        """Bytes of the index itself (the records stay on disk)."""
        return int(self._offsets.nbytes + self._lines.nbytes + self._files.nbytes)


def _parse_object(line: bytes, path: Path, lineno: int, context: str = "") -> dict:
    try:
        d = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise RecordError(path, lineno, f"{context}bad JSON ({detail})") from None
    if not isinstance(d, dict):
        raise RecordError(path, lineno, f"{context}expected a JSON object, got {type(d).__name__}")
    return d


def load_training_records(files: Iterable[PathLike], what: str) -> JsonlRecords:
    """The records of ``files`` with their resolved image paths, for training datasets: a
    :class:`JsonlRecords` (indexed, read on access).

    Raises ``ValueError`` naming ``what`` (e.g. "the UPN dataset") when there is no record.
    """
    records = JsonlRecords(files)
    if not len(records):
        raise ValueError(f"{what} is empty: give at least one JSONL file with records")
    return records
