"""Headless runs of every page of the Streamlit app against a small run trained by the tests."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from core.background import (
    progress_fraction,
    resume_command,
    stop_training,
    training_command,
    training_status,
)
from core.cli import build_parser, config_overrides
from core.config import TrainConfig
from core.edits import Edit, load_edits, save_edits
from core.labels_csv import read_labels_csv, write_labels_csv
from core.metrics_log import read_metrics
from core.run_files import RunFiles

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOME = PROJECT_ROOT / "app" / "Home.py"
DEMO = PROJECT_ROOT / "data" / "demo"
DEMO_CLASSES = ("airplane", "cat", "ship", "truck")
PAGE_TIMEOUT = 120


def copy_demo_images(target: Path, per_class: int) -> Path:
    """Copy the first ``per_class`` demo images of four classes into ``target``."""
    for name in DEMO_CLASSES:
        (target / name).mkdir(parents=True, exist_ok=True)
        for source in sorted((DEMO / name).glob("*.jpg"))[:per_class]:
            shutil.copy(source, target / name / source.name)
    return target


def build_small_run(base: Path) -> Path:
    """Train one epoch on 40 demo images into ``base/runs/small`` (once), and return the run directory."""
    run_dir = base / "runs" / "small"
    if RunFiles(run_dir).labels.exists():
        return run_dir
    images = copy_demo_images(base / "images", per_class=10)
    command = [sys.executable, "-m", "core", "label", str(images), "--out", str(run_dir),
               "--epochs", "1", "--classes", "4", "8", "--batch-size", "16", "--workers", "0"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    return build_small_run(tmp_path_factory.getbasetemp() / "app_run")


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    """A copy of the small run that a test may edit."""
    return Path(shutil.copytree(small_run, tmp_path / "runs" / "copy"))


@pytest.fixture
def csv_downloads(monkeypatch) -> list[bytes]:
    """Record the CSV files that download buttons offer."""
    offered: list[bytes] = []
    original = MediaFileManager.add

    def recording_add(self, path_or_data, mimetype, *args, **kwargs):
        if mimetype == "text/csv":
            offered.append(path_or_data)
        return original(self, path_or_data, mimetype, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add", recording_add)
    return offered


def open_page(run_dir: Path | None, page: str, **query: str) -> AppTest:
    app = AppTest.from_file(str(HOME), default_timeout=PAGE_TIMEOUT)
    if run_dir is not None:
        app.session_state["run_dir"] = str(run_dir)
    for name, value in query.items():
        app.query_params[name] = value
    return app.switch_page(page).run()


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def largest_class(run_dir: Path, head: int = 0) -> int:
    classes = read_labels_csv(RunFiles(run_dir).labels).classes[:, head].tolist()
    return max(set(classes), key=classes.count)


def button(app: AppTest, label: str):
    matches = [item for item in app.button if item.label == label]
    assert matches, f"no button {label!r} among {[item.label for item in app.button]}"
    return matches[0]


# ------------------------------------------------------------------ home


def test_home_lists_runs_and_opens_one(small_run, monkeypatch):
    monkeypatch.setenv("LABELER_RUNS_DIR", str(small_run.parent))
    app = AppTest.from_file(str(HOME), default_timeout=PAGE_TIMEOUT).run()

    assert_clean(app)
    listed = app.dataframe[0].value
    assert listed["run"].tolist() == ["small"]
    assert listed["images"].tolist() == [40]

    button(app, "Open run").click().run()

    assert_clean(app)
    assert app.title[0].value == "Overview of small"
    assert app.session_state["run_dir"] == str(small_run.resolve())


def test_home_rejects_a_folder_that_is_no_run(tmp_path):
    app = AppTest.from_file(str(HOME), default_timeout=PAGE_TIMEOUT).run()
    app.text_input[1].input(str(tmp_path))
    button(app, "Open this run directory").click().run()

    assert not app.exception
    assert "config.json is missing" in app.error[0].value


@pytest.mark.parametrize("page", ["pages/2_Overview.py", "pages/3_Classes.py", "pages/4_Map.py",
                                  "pages/5_Neighbours.py", "pages/6_Edit_and_export.py"])
def test_page_without_run_shows_hint(page):
    app = open_page(None, page)

    assert_clean(app)
    assert "No run is open" in app.info[0].value


def test_run_in_address_outside_runs_folder_is_ignored(small_run, tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_RUNS_DIR", str(tmp_path / "elsewhere"))

    app = open_page(None, "pages/2_Overview.py", run=str(small_run))

    assert not app.exception
    assert "outside the runs folder" in app.warning[0].value
    assert "No run is open" in app.info[0].value


def test_run_in_address_inside_runs_folder_opens(small_run, monkeypatch):
    monkeypatch.setenv("LABELER_RUNS_DIR", str(small_run.parent))

    app = open_page(None, "pages/2_Overview.py", run=str(small_run))

    assert_clean(app)
    assert app.title[0].value == "Overview of small"


# -------------------------------------------------------------- overview


def test_overview_shows_counts_curves_and_heads(run_copy):
    RunFiles(run_copy).diagnostics.unlink(missing_ok=True)

    app = open_page(run_copy, "pages/2_Overview.py")

    assert_clean(app)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Labelled images"] == "40"
    assert metrics["Skipped files"] == "0"
    assert metrics["Heads"] == "k4 k8"
    assert metrics["Training"] == "finished"
    assert "Non-empty classes of k4" in metrics
    assert len(app.get("plotly_chart")) == 4
    assert "Diagnostics" not in [header.value for header in app.subheader]


def test_overview_lists_skipped_files(run_copy):
    RunFiles(run_copy).skipped.write_text("path,reason\r\nbad.jpg,file is empty\r\n", encoding="utf-8")

    app = open_page(run_copy, "pages/2_Overview.py")

    assert_clean(app)
    assert {metric.label: metric.value for metric in app.metric}["Skipped files"] == "1"
    tables = [table.value for table in app.dataframe if "reason" in table.value.columns]
    assert tables[0]["reason"].tolist() == ["file is empty"]


def _overview_warnings(run_dir: Path) -> list[str]:
    return [warning.value for warning in open_page(run_dir, "pages/2_Overview.py").warning]


def test_overview_shows_class_size_warnings_once(run_copy):
    files = RunFiles(run_copy)
    source = largest_class(run_copy, head=1)
    target = (source + 1) % 8
    # Empty class `source` of k8 in the labels themselves, as diagnostics.json describes it.
    table = read_labels_csv(files.labels)
    classes = table.classes.copy()
    classes[classes[:, 1] == source, 1] = target
    write_labels_csv(files.labels, table.paths, classes, table.confidences, table.class_counts)
    diagnostics = {"heads": {}, "warnings": ["Head k8 leaves 1 of its 8 classes empty."]}
    files.diagnostics.write_text(json.dumps(diagnostics), encoding="utf-8")

    warnings = _overview_warnings(run_copy)
    assert len([warning for warning in warnings if "leaves 1 of its 8 classes empty" in warning]) == 1
    assert not [warning for warning in warnings if "classes are empty" in warning]

    # A merge changes the sizes after diagnostics.json, so the page adds its own signs.
    save_edits(files.edits, [Edit.merge("k8", target, (target + 1) % 8)])
    warnings = _overview_warnings(run_copy)
    assert [warning for warning in warnings if warning.endswith("of 8 classes are empty.")]
    assert len([warning for warning in warnings if "leaves 1 of its 8 classes empty" in warning]) == 1

    # Without diagnostics.json the page computes the signs itself.
    files.diagnostics.unlink()
    warnings = _overview_warnings(run_copy)
    assert [warning for warning in warnings if warning.endswith("of 8 classes are empty.")]


def test_overview_diagnostics_accept_and_reject(run_copy):
    source = largest_class(run_copy, head=1)
    others = [index for index in range(8) if index != source]
    suggestions = [
        {"head": "k8", "class": source, "into": others[0], "similarity": 0.81, "reason": "close centroids"},
        {"head": "k8", "class": others[1], "into": others[2], "similarity": 0.7, "reason": "overlap"},
    ]
    suggestions.append({"head": "k8", "class": source, "size": 40, "into": None, "similarity": None,
                        "reason": "low confidence"})
    diagnostics = {"heads": {"k4": {"num_nonempty_classes": 1, "class_sizes": [0, 0, 0, 40]},
                             "k8": {"num_nonempty_classes": 2, "class_sizes": [40, 0, 0, 0, 0, 0, 0, 0]}},
                   "recommended_head": "k4", "recommendation_reason": "k4 has the fewest empty classes",
                   "warnings": ["heads barely nest"], "merge_suggestions": suggestions}
    RunFiles(run_copy).diagnostics.write_text(json.dumps(diagnostics), encoding="utf-8")

    app = open_page(run_copy, "pages/2_Overview.py")

    assert_clean(app)
    assert "Recommended head: k4" in app.success[0].value
    assert "heads barely nest" in [warning.value for warning in app.warning]
    assert f"k8, class {source}: low confidence" in [note.value for note in app.info]
    head_table = [table.value for table in app.dataframe if "num_nonempty_classes" in table.value.columns][0]
    assert head_table["num_nonempty_classes"].tolist() == [1, 2]
    assert "class_sizes" not in head_table.columns
    assert len([item for item in app.button if item.label == "Accept"]) == 2
    texts = [item.value.replace("\\", "") for item in app.markdown]
    assert f"k8: merge class {source} into class {others[0]}, similarity 0.81. close centroids" in texts

    button(app, "Accept").click().run()
    assert_clean(app)
    edits = load_edits(RunFiles(run_copy).edits)
    assert [(edit.kind, edit.class_index, edit.target, edit.suggested) for edit in edits] == [
        ("merge", source, others[0], True)]
    assert len([item for item in app.button if item.label == "Accept"]) == 1

    button(app, "Reject").click().run()
    assert_clean(app)
    assert load_edits(RunFiles(run_copy).edits)[-1].kind == "reject_merge"
    assert not [item for item in app.button if item.label == "Accept"]


# --------------------------------------------------------------- classes


def test_classes_gallery_and_details(small_run):
    app = open_page(small_run, "pages/3_Classes.py")
    assert_clean(app)
    assert app.selectbox(key="classes_head").options == ["k4 (4 classes)", "k8 (8 classes)"]

    biggest = largest_class(small_run)
    app.selectbox(key="classes_class_k4").set_value(biggest).run()
    size = read_labels_csv(RunFiles(small_run).labels).classes[:, 0].tolist().count(biggest)
    opens = [item for item in app.button if item.label == "Open"]
    assert len(opens) == min(size, 48)
    assert len(app.get("image")) >= len(opens)

    opens[0].click().run()

    assert_clean(app)
    opened = app.session_state["selected_image"]
    assert app.code[0].value == opened
    assert app.dataframe[0].value["head"].tolist() == ["k4", "k8"]
    assert "**Nearest neighbours**" in [item.value for item in app.markdown]
    neighbour_opens = [item for item in app.button if item.key and item.key.startswith("details_nn_open_")]
    assert len(neighbour_opens) == 8


def test_images_appended_from_outside_are_shown(run_copy, tmp_path):
    from app.resources import preview
    from app.state import thumbnail_store
    from core.jobs import append

    outside = copy_demo_images(tmp_path / "later", per_class=1)
    added = append(run_copy, outside, device_name="cpu", workers=0).added
    assert added[0].startswith("../")

    store = thumbnail_store(run_copy)
    for path in added:
        assert store.get(path).is_file()
    data, reason = preview(run_copy, added[0])
    assert reason == ""
    assert data[:2] == b"\xff\xd8"


def test_classes_least_confident_view_is_sorted(small_run):
    app = open_page(small_run, "pages/3_Classes.py")
    app.radio(key="classes_view").set_value("Least confident, all classes").run()

    assert_clean(app)
    confidences = [float(caption.value.split(" ")[0].replace("\\", "")) for caption in app.caption
                   if caption.value[:1].isdigit()]
    assert len(confidences) == 40
    assert confidences == sorted(confidences)


def test_move_selected_images_from_gallery(run_copy):
    app = open_page(run_copy, "pages/3_Classes.py")
    app.selectbox(key="classes_class_k4").set_value(largest_class(run_copy)).run()
    boxes = [item for item in app.checkbox if item.label == "Select"]
    boxes[0].check().run()
    boxes = [item for item in app.checkbox if item.label == "Select"]
    boxes[1].check().run()
    selected = set(app.session_state["move_selection"])
    assert len(selected) == 2

    app.selectbox(key="move_target_classes").set_value(3)
    button(app, "Move selected images").click().run()

    assert_clean(app)
    edits = load_edits(RunFiles(run_copy).edits)
    assert [(edit.kind, set(edit.paths), edit.target) for edit in edits] == [("move", selected, 3)]
    assert app.session_state["move_selection"] == set()


# ------------------------------------------------------------------- map


def test_map_page_draws_every_image(small_run):
    app = open_page(small_run, "pages/4_Map.py")

    assert_clean(app)
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert sum(len(trace["customdata"]["bdata"]) > 0 for trace in figure["data"]) == len(figure["data"])
    assert RunFiles(small_run).embedding_map.exists()

    started = time.perf_counter()
    app.run()
    assert time.perf_counter() - started < 10


# ------------------------------------------------------------ neighbours


def test_neighbours_of_an_image_in_the_address(small_run):
    target = read_labels_csv(RunFiles(small_run).labels).paths[5]

    app = open_page(small_run, "pages/5_Neighbours.py", image=target)

    assert_clean(app)
    assert app.code[0].value == target
    similarities = [caption.value for caption in app.caption if caption.value[:1] in "-01"]
    assert len(similarities) == 12
    assert RunFiles(small_run).index.exists()


def test_neighbours_of_an_uploaded_image(small_run):
    app = open_page(small_run, "pages/5_Neighbours.py")
    app.radio(key="neighbours_source").set_value("An uploaded image").run()
    upload = (DEMO / "dog" / sorted(os.listdir(DEMO / "dog"))[0]).read_bytes()

    app.get("file_uploader")[0].upload("dog.jpg", upload, "image/jpeg")
    app.run()

    assert_clean(app)
    assert app.dataframe[0].value["head"].tolist() == ["k4", "k8"]
    assert len([item for item in app.button if item.label == "Open"]) == 12


def test_uploaded_file_that_is_no_image(small_run):
    app = open_page(small_run, "pages/5_Neighbours.py")
    app.radio(key="neighbours_source").set_value("An uploaded image").run()

    app.get("file_uploader")[0].upload("fake.jpg", b"this is text", "image/jpeg")
    app.run()

    assert not app.exception
    assert "cannot be read as an image" in app.error[0].value


# --------------------------------------------------------- edit and export


def test_rename_shows_in_export_and_undo_restores(run_copy, csv_downloads):
    app = open_page(run_copy, "pages/6_Edit_and_export.py")
    assert_clean(app)
    before = csv_rows(csv_downloads[-1])
    assert list(before[0]) == ["path", "class", "confidence", "class_k4", "confidence_k4",
                               "class_k8", "confidence_k8", "class_name"]
    assert len(before) == 40

    renamed = largest_class(run_copy)
    app.selectbox(key="rename_class_k4").set_value(renamed)
    app.text_input(key="rename_name_k4").input("planes")
    button(app, "Rename").click().run()

    assert_clean(app)
    assert "planes" in app.dataframe[0].value["name"].tolist()
    # A second click on Rename with the same name adds no second edit.
    button(app, "Rename").click().run()
    assert len(load_edits(RunFiles(run_copy).edits)) == 1
    assert "already named 'planes'; nothing to change" in app.error[0].value
    after = csv_rows(csv_downloads[-1])
    assert {row["class_name"] for row in after if row["class"] == str(renamed)} == {"planes"}
    assert "planes" not in {row["class_name"] for row in after if row["class"] != str(renamed)}

    button(app, "Undo the last edit").click().run()

    assert_clean(app)
    restored = csv_rows(csv_downloads[-1])
    assert "planes" not in {row["class_name"] for row in restored}
    assert restored == before
    assert load_edits(RunFiles(run_copy).edits) == []


def test_merge_and_export_for_another_head(run_copy, csv_downloads):
    app = open_page(run_copy, "pages/6_Edit_and_export.py")
    app.selectbox(key="edit_head").set_value("k8").run()
    source = largest_class(run_copy, head=1)
    target = (source + 1) % 8

    app.selectbox(key="merge_source_k8").set_value(source)
    app.selectbox(key="merge_target_k8").set_value(target)
    button(app, "Merge").click().run()

    assert_clean(app)
    exported = csv_rows(csv_downloads[-1])
    assert list(exported[0])[3] == "class_k8"
    assert str(source) not in {row["class"] for row in exported}
    assert {row["class_k8"] for row in exported} == {row["class"] for row in exported}
    labels = read_labels_csv(RunFiles(run_copy).labels)
    assert labels.classes[:, 1].tolist().count(source) > 0


def test_rejected_edit_shows_message(run_copy):
    app = open_page(run_copy, "pages/6_Edit_and_export.py")
    app.selectbox(key="merge_source_k4").set_value(1)
    app.selectbox(key="merge_target_k4").set_value(1)
    button(app, "Merge").click().run()

    assert not app.exception
    assert "cannot be merged into itself" in app.error[0].value
    assert not RunFiles(run_copy).edits.exists()


def test_broken_edits_file_can_be_set_aside(run_copy):
    RunFiles(run_copy).edits.write_text("[{broken", encoding="utf-8")

    app = open_page(run_copy, "pages/6_Edit_and_export.py")

    assert not app.exception
    assert "cannot be read" in app.error[0].value
    button(app, "Move the broken edits file aside and start with no edits").click().run()
    assert_clean(app)
    assert not RunFiles(run_copy).edits.exists()
    assert len(list(run_copy.glob("edits.json.broken-*"))) == 1


# ----------------------------------------------------------------- train


def test_train_page_shows_a_finished_run(small_run):
    app = open_page(small_run, "pages/1_Train.py")

    assert_clean(app)
    assert "finished" in app.info[0].value
    assert len(app.get("plotly_chart")) == 2


def test_train_page_rejects_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_RUNS_DIR", str(tmp_path / "runs"))
    app = open_page(None, "pages/1_Train.py")
    app.text_input(key="new_folder").input(str(tmp_path / "nowhere"))
    button(app, "Start training").click().run()

    assert not app.exception
    assert "is not a folder" in app.error[0].value


def test_train_page_starts_stops_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_RUNS_DIR", str(tmp_path / "runs"))
    images = copy_demo_images(tmp_path / "images", per_class=2)
    app = open_page(None, "pages/1_Train.py")
    app.text_input(key="new_folder").input(str(images))
    app.text_input(key="new_name").input("fresh")
    app.text_input(key="new_classes").input("2 3")
    app.radio(key="new_stop_by").set_value("a number of epochs")
    app.number_input(key="new_epochs").set_value(100_000)
    app.number_input(key="new_color_strength").set_value(0.0)
    button(app, "Start training").click().run()
    run_dir = tmp_path / "runs" / "fresh"

    try:
        assert not app.exception
        assert app.session_state["run_dir"] == str(run_dir.resolve())
        assert training_status(run_dir).running
        _wait_for(lambda: RunFiles(run_dir).checkpoint.exists(), "a first checkpoint")
        assert TrainConfig.load(RunFiles(run_dir).config).color_strength == 0.0

        app.run()
        button(app, "Stop training").click().run()
        _wait_for(lambda: not training_status(run_dir).running, "training to stop")
        assert training_status(run_dir).state == "stopped"

        app.run()
        assert "stopped" in app.info[0].value
        epochs_before = len(read_metrics(RunFiles(run_dir).metrics))
        button(app, "Resume training").click().run()
        assert training_status(run_dir).running
        _wait_for(lambda: len(read_metrics(RunFiles(run_dir).metrics)) > epochs_before, "a resumed epoch")
    finally:
        stop_training(run_dir)
        _wait_for(lambda: not training_status(run_dir).running, "training to stop", fail=False)
        pid = training_status(run_dir).pid
        if training_status(run_dir).running and pid:
            os.kill(pid, signal.SIGKILL)


def _wait_for(condition, description: str, seconds: float = 120, fail: bool = True) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    if fail:
        pytest.fail(f"timed out after {seconds} s waiting for {description}")


# ------------------------------------------------------------ background


def test_training_command_round_trips_through_the_cli(tmp_path):
    settings = {"class_counts": (5, 7), "epochs": 3, "time_budget": 90.0, "backbone": "resnet18",
                "device": "cpu", "base_lr": 0.25, "nn_queue_size": 64, "sync_batchnorm": True, "seed": None,
                "color_strength": 0.5, "min_crop_scale": 0.35}

    command = training_command(tmp_path, tmp_path / "run", settings)
    arguments = build_parser().parse_args(command[3:])

    assert command[:4] == [sys.executable, "-m", "core", "label"]
    assert arguments.folder == tmp_path.resolve()
    assert arguments.out == (tmp_path / "run").resolve()
    expected = {name: value for name, value in settings.items() if value is not None}
    assert config_overrides(arguments) == expected


def test_resume_command_follows_a_moved_run(tmp_path):
    old_run, new_run = tmp_path / "runs" / "first", tmp_path / "runs" / "renamed"
    command = training_command(tmp_path, old_run, {"epochs": 7})
    new_run.mkdir(parents=True)
    RunFiles(new_run).train_pid.write_text(json.dumps({"pid": 1, "command": command}), encoding="utf-8")

    resumed = resume_command(new_run)

    arguments = build_parser().parse_args(resumed[3:])
    assert arguments.out == new_run.resolve()
    assert arguments.epochs == 7
    assert resumed[0] == sys.executable


def test_training_command_rejects_invalid_settings(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        training_command(tmp_path, tmp_path / "run", {"class_counts": (1,)})


def test_training_command_rejects_setting_without_option(tmp_path):
    with pytest.raises(ValueError, match="momentum has no command-line option"):
        training_command(tmp_path, tmp_path / "run", {"momentum": 0.5})


@pytest.mark.parametrize(
    ("epochs", "budget", "records", "expected"),
    [
        (10, 0.0, [], 0.0),
        (10, 0.0, [{"epoch": 4, "elapsed_seconds": 1.0}], 0.4),
        (100, 60.0, [{"epoch": 1, "elapsed_seconds": 30.0}], 0.5),
        (2, 60.0, [{"epoch": 2, "elapsed_seconds": 90.0}], 1.0),
    ],
)
def test_progress_fraction(epochs, budget, records, expected):
    assert progress_fraction(epochs, budget, records) == pytest.approx(expected)
