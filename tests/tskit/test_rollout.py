"""Rollout decisions and history, without a server (the live rollout is tests/e2e/test_rollout_e2e.py)."""
import pytest

from export.golden import inputs_from_files, top1
from tskit.rollout import (ReplayReport, VersionStats, agreement_of, archive_samples, read_history, stage_in_store,
                           write_history)


@pytest.mark.parametrize("answer, expected", [
    ({"espresso": 0.9, "cup": 0.05}, "espresso"),
    ([{"label": "cat", "score": 0.9, "box": [0, 0, 1, 1]}, {"label": "dog", "score": 0.8, "box": [1, 1, 2, 2]}],
     ("cat", "dog")),
    ([0.1, 0.7, 0.2], 1),
    ([[0.1, 0.7], [0.9, 0.1]], (1, 0)),
    ([], ()),
])
def test_top1_reads_every_handler_answer(answer, expected):
    assert top1(answer) == expected


@pytest.mark.parametrize("before, after, expected", [
    ({"espresso": 0.9, "cup": 0.05}, {"espresso": 0.8, "cup": 0.1}, "same"),
    ({"espresso": 0.9, "cup": 0.05}, {"cup": 0.6, "espresso": 0.3}, None),  # a confident answer flipped
    ({"academic gown": 0.26, "mortarboard": 0.21}, {"mortarboard": 0.23, "academic gown": 0.2}, "close call"),
    ({"academic gown": 0.26, "mortarboard": 0.21}, {"mortarboard": 0.6, "academic gown": 0.2}, None),  # now sure
    ({"bobsled": 0.13, "football helmet": 0.12}, {"barbell": 0.33, "torch": 0.06}, None),  # another answer
    ([{"label": "cat", "score": 0.3}], [{"label": "dog", "score": 0.3}], None),  # not a {label: p} answer
    ({"espresso": 0.9}, None, None),  # the new version failed
])
def test_agreement_is_the_guards_rule(before, after, expected):
    assert agreement_of(before, after) == expected


def report(agreed=10, samples=10, old_ms=(10.0,), new_ms=(12.0,), new_errors=()):
    return ReplayReport("m", "1.0", "2.0", samples, agreed, VersionStats(list(old_ms)),
                        VersionStats(list(new_ms), list(new_errors)), [])


def test_a_version_that_agrees_and_is_fast_enough_passes():
    assert report().refusals(0.99, 1.5) == []


def test_each_threshold_refuses_with_its_reason():
    assert "agreement 90.0% < 99.0%" in report(agreed=9).refusals(0.99, 1.5)[0]
    assert "2.00x" in report(new_ms=(20.0,)).refusals(0.99, 1.5)[0]
    assert "failed request" in report(new_errors=["a.jpg: 500"]).refusals(0.99, 1.5)[0]


def test_history_round_trips(tmp_path):
    assert read_history(tmp_path) == {}
    write_history(tmp_path, {"m": ["1.0", "2.0"]})
    assert read_history(tmp_path) == {"m": ["1.0", "2.0"]}


def test_samples_come_from_the_archive_or_from_files(default_mar, tmp_path):
    golden = archive_samples(default_mar)
    assert golden and all(s.payload for s in golden)
    (tmp_path / "a.json").write_text('{"data": [1]}')
    (tmp_path / "b.jpg").write_bytes(golden[0].payload)
    found = {s.name: s.content_type for s in inputs_from_files([tmp_path])}
    assert found == {"a.json": "application/json", "b.jpg": "image/jpeg"}


def test_a_new_version_beside_a_same_named_archive_is_staged_under_its_version(tmp_path):
    store, build = tmp_path / "store", tmp_path / "build"
    store.mkdir()
    build.mkdir()
    (store / "m.mar").write_bytes(b"version 1")
    (build / "m.mar").write_bytes(b"version 2")
    assert stage_in_store(build / "m.mar", store, "2.0") == "m-2.0.mar"
    assert (store / "m-2.0.mar").read_bytes() == b"version 2" and (store / "m.mar").read_bytes() == b"version 1"
    assert stage_in_store(build / "m.mar", store, "2.0") == "m-2.0.mar"  # already there: reused
    (build / "m.mar").write_bytes(b"version 3")
    with pytest.raises(ValueError, match="rename the archive"):
        stage_in_store(build / "m.mar", store, "2.0")
