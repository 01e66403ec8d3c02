"""JSONL records: round trip, and errors that name the file and line."""

from __future__ import annotations

import json

import pytest

from chatrex.data.jsonl import RecordError, count_records, read_records, resolve_image_path, write_records
from chatrex.data.schema import Record
from tests.data.test_schema import good_record


def _record(i: int, image: str = "img.png") -> dict:
    d = good_record()
    d["id"] = f"r{i}"
    d["image"] = image
    return d


def test_round_trip_dicts_and_dataclasses(tmp_path):
    path = tmp_path / "sub" / "train.jsonl"
    records = [_record(0), Record.from_dict(_record(1))]
    assert write_records(path, records) == 2
    back = list(read_records(path))
    assert back == [_record(0), _record(1)]
    assert count_records(path) == 2
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n\n   \n" + json.dumps(_record(1)) + "\n")
    assert [r["id"] for r in read_records(path)] == ["r0", "r1"]


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_record(1)) + "\n{not json\n")
    it = read_records(path)
    assert next(it)["id"] == "r0"
    assert next(it)["id"] == "r1"
    with pytest.raises(RecordError) as e:
        next(it)
    assert f"{path}:3:" in str(e.value) and "bad JSON" in str(e.value)
    assert e.value.line == 3 and e.value.path == path


def test_schema_error_names_line_and_problem(tmp_path):
    bad = _record(1)
    bad["regions"][0]["box"] = [50, 20, 40, 80]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (_record(0), bad)) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:2: record 'r1': regions\[0\]\.box: x0 must be < x1"):
        list(read_records(path))
    assert len(list(read_records(path, validate=False))) == 2


def test_non_object_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(RecordError, match=r"l\.jsonl:1: expected a JSON object, got list"):
        list(read_records(path))


def test_missing_image_when_checked(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.png").write_bytes(b"x")
    path = tmp_path / "d.jsonl"
    write_records(path, [_record(0, "images/ok.png"), _record(1, "images/missing.png")])
    assert len(list(read_records(path))) == 2
    with pytest.raises(RecordError, match=r"d\.jsonl:2: record 'r1': image file not found: .*missing\.png"):
        list(read_records(path, check_images=True))


def test_resolve_image_path(tmp_path):
    jsonl = tmp_path / "x" / "train.jsonl"
    assert resolve_image_path({"image": "images/a.jpg"}, jsonl) == tmp_path / "x" / "images" / "a.jpg"
    assert resolve_image_path({"image": "/data/a.jpg"}, jsonl).as_posix() == "/data/a.jpg"
    assert resolve_image_path(Record.from_dict(_record(0, "b.png")), jsonl) == tmp_path / "x" / "b.png"
    with pytest.raises(ValueError, match="has no 'image'"):
        resolve_image_path({"id": "q"}, jsonl)


def test_write_validate_refuses_and_leaves_nothing(tmp_path):
    bad = _record(1)
    del bad["width"]
    path = tmp_path / "w.jsonl"
    with pytest.raises(RecordError, match=r"w\.jsonl:2: .*missing required key 'width'"):
        write_records(path, [_record(0), bad], validate=True)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no JSONL file"):
        list(read_records(tmp_path / "nope.jsonl"))


def _write_many(path, n, image="img.png"):
    rec = _record(0, image)
    with open(path, "w") as f:
        for i in range(n):
            rec["id"] = f"r{i}"
            f.write(json.dumps(rec) + "\n")


def test_jsonl_records_index_files_and_read_records_on_access(tmp_path):
    from chatrex.data.jsonl import JsonlRecords, load_training_records

    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a.jsonl", tmp_path / "b" / "b.jsonl"
    a.write_text(json.dumps(_record(0)) + "\n\n  \n" + json.dumps(_record(1, "x/1.png")) + "\n")
    b.write_text(json.dumps(_record(2)))  # no final newline
    records = load_training_records([a, b], "the test set")
    assert isinstance(records, JsonlRecords) and len(records) == 3
    assert [r["id"] for r, _ in records] == ["r0", "r1", "r2"]
    assert list(records) == [records[i] for i in range(3)]
    assert records[1] == (_record(1, "x/1.png"), tmp_path / "x" / "1.png")
    assert records[-1] == (_record(2), tmp_path / "b" / "img.png")
    with pytest.raises(IndexError):
        records[3]
    import pickle

    assert list(pickle.loads(pickle.dumps(records))) == list(records)  # what a spawned DataLoader worker gets
    assert records.nbytes() == 3 * 14


def test_jsonl_records_errors_name_file_and_line(tmp_path):
    from chatrex.data.jsonl import JsonlRecords, load_training_records

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_record(0)) + "\n[1, 2]\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        JsonlRecords([bad])
    bad.write_text(json.dumps(_record(0)) + "\n\n{not json\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:3: bad JSON"):
        JsonlRecords([bad])
    with pytest.raises(FileNotFoundError):
        JsonlRecords([tmp_path / "missing.jsonl"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="the UPN dataset is empty"):
        load_training_records([empty], "the UPN dataset")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_record(1)) + "\n")
    records = JsonlRecords([good])
    good.write_text("{}\n")  # rewritten under the dataset's feet
    with pytest.raises(RecordError, match="good.jsonl:2: the file changed after it was indexed"):
        records[1]


def test_training_records_are_not_held_in_memory(tmp_path):
    """5,000 records (5 MB of JSON, tens of MB as Python dicts): indexing them allocates some hundred kB
    (14 bytes a record, and one line at a time)."""
    import tracemalloc

    from chatrex.data.jsonl import load_training_records

    path = tmp_path / "many.jsonl"
    _write_many(path, 5_000)
    assert path.stat().st_size > 4_000_000
    tracemalloc.start()
    try:
        records = load_training_records([path], "the test set")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 5_000 and records[1_234][0]["id"] == "r1234"
    assert peak < 1_000_000, peak
