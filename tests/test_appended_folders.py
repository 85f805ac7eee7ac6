from core.appended_folders import read_appended_folders, record_appended_folder
from core.run_files import RunFiles


def test_appended_folders_round_trip_once_each(tmp_path):
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    first, second = tmp_path / "a", tmp_path / "b"

    record_appended_folder(files, first)
    record_appended_folder(files, second)
    record_appended_folder(files, tmp_path / "a" / ".." / "a")

    assert read_appended_folders(files.root) == [first.resolve(), second.resolve()]


def test_appended_folders_missing_or_unreadable_is_empty(tmp_path):
    files = RunFiles(tmp_path)
    assert read_appended_folders(tmp_path) == []

    files.appended_folders.write_text("{not json", encoding="utf-8")
    assert read_appended_folders(tmp_path) == []

    files.appended_folders.write_text('{"a": 1}', encoding="utf-8")
    assert read_appended_folders(tmp_path) == []
