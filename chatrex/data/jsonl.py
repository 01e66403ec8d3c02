"""Reading and writing records as JSON Lines (one record per line, UTF-8).

:func:`read_records` streams a file and raises :class:`RecordError` naming the file, the line number
and the problem (bad JSON, schema errors, a missing image file). It yields plain dicts (the JSON
objects as written); build :class:`chatrex.data.schema.Record` objects with ``Record.from_dict`` when
typed access is wanted. Image paths in records are relative to the JSONL file's folder
(:func:`resolve_image_path`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

from chatrex.data.schema import Record, validate_record

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
    """Write ``records`` to ``path`` (atomically: a temporary file renamed at the end).

    Args:
        path: output ``.jsonl`` file; its folder is created.
        records: dicts or :class:`Record` objects.
        validate: check each record first and raise :class:`RecordError` (line = record number) on
            the first invalid one; nothing is written then.

    Returns:
        The number of records written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for n, record in enumerate(records, start=1):
                d = _as_dict(record)
                if validate:
                    errors = validate_record(d)
                    if errors:
                        raise RecordError(path, n, "; ".join(errors))
                f.write(dumps_record(d))
                f.write("\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
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


def load_training_records(files: Iterable[PathLike], what: str) -> list[tuple[dict, Path]]:
    """All records of ``files`` with their resolved image paths, for training datasets.

    Raises ``ValueError`` naming ``what`` (e.g. "the UPN dataset") when there is no record.
    """
    records = [(r, resolve_image_path(r, f)) for f in files for r in read_records(f, validate=False)]
    if not records:
        raise ValueError(f"{what} is empty: give at least one JSONL file with records")
    return records
