import pickle

import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = {"model": {"w": torch.arange(3.0)}, "training": {"epoch": 2, "finished": False}}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(3.0))
    assert loaded["training"] == {"epoch": 2, "finished": False}
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_checkpoint_with_arbitrary_object_is_rejected(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"x": _Payload()}, handle)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_missing_and_truncated_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    path = tmp_path / "cut.pt"
    save_checkpoint(path, {"w": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)
