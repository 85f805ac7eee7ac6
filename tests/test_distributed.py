"""Distributed training and assignment on CPU: gloo, two processes on 127.0.0.1."""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from core import distributed
from core.labels_csv import read_labels_csv
from core.loss import SelfClassifierLoss
from core.metrics_log import read_metrics
from core.run_files import RunFiles

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "16", "--classes", "4", "8", "--image-size", "32", "--workers", "0",
        "--hidden-dim", "64"]
WORLD = 2
NUM_VIEWS, BATCH, FEATURES = 3, 8, 12


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _join(rank: int, port: int, timeout: float = 60.0) -> None:
    """Join a two-process group the way torchrun describes one, through the environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_environment(timeout)


def _spawn(worker, *args) -> None:
    mp.spawn(worker, args=(_free_port(), *args), nprocs=WORLD, join=True)


def _torchrun(port: int, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
            "--master_addr", "127.0.0.1", f"--master_port={port}", "-m", "core", *arguments]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# Loss and gradients: two halves of a batch against the whole batch


class _TinyClassifier(nn.Module):
    """Two classifier heads on a small MLP without BatchNorm, so each row's output ignores the rest of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(16, 4), nn.Linear(16, 6)])

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.body(inputs)
        return [head(hidden) for head in self.heads]


def _problem() -> tuple[_TinyClassifier, torch.Tensor, torch.Tensor]:
    """Return a model, inputs (views, batch, features) and head-0 logits (views, batch, 5)."""
    torch.manual_seed(0)
    model = _TinyClassifier()
    inputs = torch.randn(NUM_VIEWS, BATCH, FEATURES)
    logits = 3 * torch.randn(NUM_VIEWS, BATCH, 5)
    return model, inputs, logits


def _single_process_reference() -> dict:
    model, inputs, logits = _problem()
    criterion = SelfClassifierLoss()
    loss = criterion(model(inputs))
    loss.backward()
    logits = logits.clone().requires_grad_()
    logits_loss = criterion([logits])
    logits_loss.backward()
    return {"loss": loss.item(), "grads": {name: p.grad for name, p in model.named_parameters()},
            "logits_loss": logits_loss.item(), "logits_grad": logits.grad}


def _loss_step_worker(rank: int, port: int, out: Path) -> None:
    _join(rank, port)
    model, inputs, logits = _problem()
    own = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    criterion = SelfClassifierLoss()

    ddp = nn.parallel.DistributedDataParallel(model)
    loss = criterion(ddp(inputs[:, own]))
    loss.backward()

    local_logits = logits[:, own].clone().requires_grad_()
    logits_loss = criterion([local_logits])
    logits_loss.backward()

    torch.save({"loss": loss.item(), "grads": {name: p.grad for name, p in model.named_parameters()},
                "logits_loss": logits_loss.item(), "logits_grad": local_logits.grad},
               out / f"rank{rank}.pt")
    distributed.shutdown()


def test_two_halves_match_whole_batch(tmp_path):
    _spawn(_loss_step_worker, tmp_path)
    reference = _single_process_reference()
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    # Each process averages over its own rows, so the mean over processes is the global loss.
    assert np.mean([r["loss"] for r in ranks]) == pytest.approx(reference["loss"], rel=1e-5, abs=1e-6)
    assert np.mean([r["logits_loss"] for r in ranks]) == pytest.approx(reference["logits_loss"], rel=1e-5)

    # DistributedDataParallel averages the processes' gradients.
    for rank in ranks:
        for name, expected in reference["grads"].items():
            torch.testing.assert_close(rank["grads"][name], expected, rtol=1e-5, atol=1e-5, msg=name)

    # The all-gather sends each process the sum of every loss's gradient for its
    # rows: WORLD times its share of the gradient of the mean loss.
    gathered = torch.cat([r["logits_grad"] for r in ranks], dim=1) / WORLD
    torch.testing.assert_close(gathered, reference["logits_grad"], rtol=1e-5, atol=1e-6)


# Helpers: sharding, gathering, consistency checks, timeouts


@pytest.mark.parametrize("count", [0, 1, 5, 8, 11])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_bounds_cover_items_in_order(monkeypatch, count, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    covered = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        start, stop = distributed.shard_bounds(count)
        covered.extend(range(start, stop))
        assert stop - start in (count // world, count // world + 1)
    assert covered == list(range(count))


def _helpers_worker(rank: int, port: int, out: Path) -> None:
    _join(rank, port)
    results = {}

    # Uneven row counts, moved in chunks smaller than either share.
    local = np.arange(rank * 100, rank * 100 + 5 + 2 * rank, dtype=np.float32).reshape(-1, 1).repeat(3, axis=1)
    gathered = np.full((12, 3), -1.0, dtype=np.float32) if rank == 0 else None
    distributed.gather_rows(local, gathered, chunk_rows=2)
    results["rows"] = gathered

    results["objects"] = distributed.all_gather_objects(f"rank {rank}")
    results["sum"] = distributed.sum_over_processes(torch.tensor([rank + 1.0, 10.0]))
    results["max"] = distributed.max_over_processes(float(rank) + 0.5)
    distributed.check_same_list(["a.jpg", "b.jpg", os.fsdecode(b"caf\xe9.jpg")], "list of images")
    try:
        distributed.check_same_list(["a.jpg"] if rank == 0 else ["b.jpg"], "list of images")
    except ValueError as error:
        results["mismatch"] = str(error)

    with distributed.main_process_first():
        if rank == 0:
            (out / "first.txt").write_text("main")
        else:
            results["saw_main_file"] = (out / "first.txt").exists()
    distributed.check_shared_directory(out / "run")
    results["markers_left"] = sorted(p.name for p in (out / "run").iterdir())
    torch.save(results, out / f"rank{rank}.pt")
    distributed.shutdown()


def test_helpers_gather_and_check(tmp_path):
    _spawn(_helpers_worker, tmp_path)
    main_results = torch.load(tmp_path / "rank0.pt", weights_only=False)
    other_results = torch.load(tmp_path / "rank1.pt", weights_only=False)

    expected_rows = np.concatenate([np.arange(0, 5), np.arange(100, 107)]).astype(np.float32)
    np.testing.assert_array_equal(main_results["rows"], expected_rows[:, None].repeat(3, axis=1))
    assert other_results["rows"] is None
    for results in (main_results, other_results):
        assert results["objects"] == ["rank 0", "rank 1"]
        torch.testing.assert_close(results["sum"], torch.tensor([3.0, 20.0]))
        assert results["max"] == 1.5
        assert "processes [1] found a different list of images than rank 0" in results["mismatch"]
    assert other_results["saw_main_file"] is True
    assert main_results["markers_left"] == []


def _stalled_peer_worker(rank: int, port: int, out: Path, timeout: float) -> None:
    _join(rank, port, timeout)
    outcome_file = out / "outcome.txt"
    if rank == 1:
        # It stays alive but never joins the collective below. It leaves once rank 0 is done.
        deadline = time.monotonic() + 10 * timeout
        while not outcome_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return
    started = time.monotonic()
    try:
        distributed.sum_over_processes(torch.ones(1))
        outcome = "finished"
    except RuntimeError as error:
        outcome = str(error)
    outcome_file.write_text(f"{time.monotonic() - started}\n{outcome}")
    distributed.exit_process(0)


def test_stalled_peer_raises_after_timeout(tmp_path):
    timeout = 5.0
    _spawn(_stalled_peer_worker, tmp_path, timeout)
    seconds, outcome = (tmp_path / "outcome.txt").read_text().split("\n", 1)
    assert "timed out" in outcome.lower()
    assert timeout * 0.9 <= float(seconds) < timeout + 10


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="positive number of seconds, got 0"):
        distributed.init_from_environment(0)


# The train and assign commands under torchrun


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A folder of 40 demo images and a run trained for one epoch by two processes."""
    from conftest import copy_demo_images

    root = tmp_path_factory.mktemp("distributed")
    folder = copy_demo_images(root / "images")
    run = root / "run"
    command = _torchrun(_free_port(), "train", str(folder), "--out", str(run), "--epochs", "1", *FAST)
    finished = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return folder, run, finished.stderr


def test_torchrun_train_writes_one_run(two_process_run):
    _, run, output = two_process_run
    files = RunFiles(run)
    assert [record["epoch"] for record in read_metrics(files.metrics)] == [1]
    assert "global batch 16 over 2 processes" in output
    # Only rank 0 logs at INFO level and writes files.
    assert output.count("Joined a process group of 2 processes") == 1
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "cache", "checkpoint.pt", "config.json", "metrics.jsonl", "run.log", "skipped.csv"
    ]
    checkpoint = torch.load(files.checkpoint, weights_only=True)
    assert checkpoint["training"]["epoch"] == 1
    assert checkpoint["generators"].shape[0] == 2
    assert not torch.equal(checkpoint["generators"][0], checkpoint["generators"][1])


def test_torchrun_train_resumes(two_process_run):
    folder, run, _ = two_process_run
    command = _torchrun(_free_port(), "train", str(folder), "--out", str(run), "--epochs", "2", "--workers", "0")
    finished = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resuming from" in finished.stderr
    assert [record["epoch"] for record in read_metrics(RunFiles(run).metrics)] == [1, 2]
    assert torch.load(RunFiles(run).checkpoint, weights_only=True)["training"]["epoch"] == 2


def test_torchrun_assign_matches_one_process(two_process_run, tmp_path):
    # Imported here, not at the top, so that the processes spawned above skip
    # the slow import of the whole engine.
    from core.cli import main

    _, run, _ = two_process_run
    assert main(["assign", str(run), "--csv", str(tmp_path / "one.csv"), "--device", "cpu"]) == 0
    command = _torchrun(_free_port(), "assign", str(run), "--csv", str(tmp_path / "two.csv"), "--device", "cpu")
    finished = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    single, sharded = read_labels_csv(tmp_path / "one.csv"), read_labels_csv(tmp_path / "two.csv")
    assert sharded.paths == single.paths
    np.testing.assert_array_equal(sharded.classes, single.classes)
    np.testing.assert_allclose(sharded.confidences, single.confidences, atol=1e-4)
    # The embeddings go beside each CSV, with rows in the CSV's order.
    embeddings = np.load(tmp_path / "two.embeddings.npy")
    assert embeddings.shape == (40, 128)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(embeddings, np.load(tmp_path / "one.embeddings.npy"), atol=1e-4)


# A process that dies


def _wait_for_first_epoch(run: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not read_metrics(RunFiles(run).metrics):
        assert process.poll() is None, "training ended before its first epoch"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.1)


def _worker_pid(parent: int, rank: int) -> int:
    """Return the pid of the child of ``parent`` whose environment has RANK=``rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent_pid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent_pid == parent and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under process {parent}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_torchrun_stops_when_worker_killed(demo_folder, tmp_path):
    run = tmp_path / "run"
    command = _torchrun(_free_port(), "train", str(demo_folder), "--out", str(run), "--epochs", "200", *FAST)
    process = subprocess.Popen(command, cwd=REPO, env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_first_epoch(run, process)
        os.kill(_worker_pid(process.pid, 1), signal.SIGKILL)
        killed = time.monotonic()
        _, errors = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode != 0
    assert time.monotonic() - killed < 60
    assert "SIGKILL" in errors
    assert len(read_metrics(RunFiles(run).metrics)) < 200


def test_peer_death_without_torchrun_stops_rank_zero(demo_folder, tmp_path):
    # Two processes started separately, as on two machines: no launcher stops
    # rank 0 for us, so it must notice the lost peer itself.
    run, port = tmp_path / "run", _free_port()
    command = [sys.executable, "-m", "core", "train", str(demo_folder), "--out", str(run), "--epochs", "200",
               "--dist-timeout", "20", *FAST]
    processes = []
    for rank in range(WORLD):
        environment = {**_environment(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
    main_process, peer = processes
    try:
        _wait_for_first_epoch(run, main_process)
        peer.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, errors = main_process.communicate(timeout=60)
    finally:
        for process in processes:
            process.kill()
            process.wait()

    assert main_process.returncode == 1
    assert time.monotonic() - killed < 30
    assert "Rank 0 stopped" in errors
    assert "Run the same command again to resume" in errors


def test_torchrun_on_busy_run_stops_every_rank(demo_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    command = _torchrun(_free_port(), "train", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST)
    with open(run / ".lock", "w", encoding="utf-8") as handle:
        handle.write("12345")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        finished = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True,
                                  timeout=120)

    assert finished.returncode != 0
    assert time.monotonic() - started < 60
    assert finished.stderr.count("another process (pid 12345) is already working on") == WORLD
    assert not (run / "checkpoint.pt").exists()
