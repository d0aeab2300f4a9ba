"""What a predict run leaves beside its cases (medp2p.infer.records): per-part names, kept and removed lists."""

from __future__ import annotations

import csv
from pathlib import Path

from medp2p.infer.records import PredictReport, part_file, write_lists


def test_part_files_are_named_per_part_only_when_split(tmp_path: Path) -> None:
    assert part_file(tmp_path, "predict", ".json", 1, 0) == tmp_path / "predict.json"
    assert part_file(tmp_path, "failures", ".csv", 4, 1) == tmp_path / "failures_part-1-of-4.csv"
    assert part_file(tmp_path, "finished", ".txt", 2, 0).name == "finished_part-0-of-2.txt"


def test_lists_of_a_stopped_part_are_written_and_removed_when_a_later_run_finishes(tmp_path: Path) -> None:
    stopped = PredictReport(written={"a": [], "b": []}, failures=[{"case": "c", "input": "c.nii.gz", "error": "disk full"}])
    stopped.stopped = "writing case c failed: disk full"
    write_lists(stopped, tmp_path, num_parts=3, part_id=2)
    assert stopped.failures_csv == tmp_path / "failures_part-2-of-3.csv"
    assert stopped.finished_txt == tmp_path / "finished_part-2-of-3.txt"
    with stopped.failures_csv.open() as fh:
        assert list(csv.DictReader(fh)) == stopped.failures
    assert stopped.finished_txt.read_text() == "a\nb\n"
    other_part = tmp_path / "failures_part-1-of-3.csv"
    other_part.write_text("case,input,error\n")

    finished = PredictReport(written={"a": [], "b": [], "c": []})
    write_lists(finished, tmp_path, num_parts=3, part_id=2)
    assert finished.failures_csv is None and finished.finished_txt is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_part.name]  # another part's list is not touched
