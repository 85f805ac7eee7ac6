"""The list of folders whose images were appended to a run, kept in ``RUN/appended_folders.json``.

Appended images outside the run's image folder are stored in labels.csv
with ``..`` segments (``core.append``). The app reads an image only when it
lies inside the image folder or one of these folders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.json_files import write_json_atomic
from core.run_files import RunFiles

logger = logging.getLogger(__name__)


def record_appended_folder(files: RunFiles, folder: Path) -> None:
    """Add ``folder``, resolved, to the run's list of appended folders, once."""
    folders = [str(path) for path in read_appended_folders(files.root)]
    resolved = str(Path(folder).resolve())
    if resolved not in folders:
        write_json_atomic(files.appended_folders, [*folders, resolved])


def read_appended_folders(run_dir: Path) -> list[Path]:
    """Return the folders that images were appended to ``run_dir`` from; an unreadable list counts as empty."""
    path = RunFiles(Path(run_dir)).appended_folders
    try:
        folders = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        logger.warning("Ignoring the unreadable list of appended folders %s: %s", path, error)
        return []
    if not isinstance(folders, list):
        logger.warning("Ignoring %s: expected a JSON list of folder paths", path)
        return []
    return [Path(item) for item in folders if isinstance(item, str)]
