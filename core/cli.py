"""Command-line interface: ``python -m core {label,train,assign,evaluate}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from core import distributed, jobs
from core.commands import app_command, core_command
from core.config import DEVICES, PRECISIONS, ConfigError, TrainConfig
from core.evaluate import evaluate_run
from core.logs import setup_logging
from core.run_files import RunFiles
from core.run_lock import RunBusyError, run_lock
from core.train import TrainingDivergedError
from data.scan import check_image_folder, contains_image_files, no_images_message
from models.backbones import BACKBONES
from models.names import FITTED_BACKBONES
from models.weights import IMAGENET

logger = logging.getLogger("core")

# CLI option name -> TrainConfig field, for options whose names differ.
FIELD_OF_OPTION = {"classes": "class_counts", "lr": "base_lr", "nn_queue": "nn_queue_size"}
OPTION_OF_FIELD = {field: option for option, field in FIELD_OF_OPTION.items()}
# TrainConfig fields that no command-line option sets.
FIELDS_WITHOUT_OPTION = frozenset({"image_folder", "momentum", "eps", "standard_stem"})


# Advice after Ctrl-C, by command: what the interrupted command left.
_INTERRUPTED_ADVICE = {
    "label": "The last checkpoint is kept; run the same command again to resume.",
    "train": "The last checkpoint is kept; run the same command again to resume.",
    "assign": "Files are replaced only once complete, so each is whole, old or new; run the same command "
              "again to finish. With --append it adds only the images not yet in the run.",
    "evaluate": "Nothing was written; run the same command again.",
}


def _interrupted_advice(args: argparse.Namespace) -> str:
    """Return what to do after Ctrl-C, for the command and, in training, the kind of run."""
    head_only = getattr(args, "freeze_backbone", None) or getattr(args, "backbone", None) in FITTED_BACKBONES
    if args.command in ("label", "train") and head_only:
        return ("Head-only training does not resume: run the same command again. It reuses the cached "
                "features if they were complete, and trains the heads again.")
    return _INTERRUPTED_ADVICE[args.command]


def _add_training_options(parser: argparse.ArgumentParser, folder_help: str) -> None:
    """Add the training settings; every default is TrainConfig's, so unset options stay unset."""
    add = parser.add_argument
    add("folder", type=Path, help=folder_help)
    add("--out", type=Path, required=True, help="run directory for the checkpoint, labels and logs")
    add("--classes", type=int, nargs="+", metavar="C",
        help="class count of each head; the first is the primary head (default: 10 20 40)")
    add("--epochs", type=int, help="passes over the folder (default: 100)")
    add("--time-budget", type=float, metavar="SECONDS",
        help="stop training after this many seconds of training steps and still write labels (default: none)")
    add("--batch-size", type=int,
        help="images per step over all processes, split evenly between them "
             "(default: 256, or fewer if the folder is smaller; 0 also picks this)")
    add("--backbone", choices=("auto",) + BACKBONES,
        help="network before the projection; auto picks resnet10t on CPU and resnet18 on CUDA")
    add("--image-size", type=int, metavar="PIXELS",
        help="side of the global crops (default: the images' typical size, at most 64 on CPU and 224 on CUDA)")
    add("--local-crops", type=int, help="number of small local crops per image (default: 0)")
    add("--local-size", type=int, metavar="PIXELS", help="side of the local crops (default: 96/224 of the image size)")
    add("--device", choices=DEVICES, help="where to train (default: auto, CUDA when available)")
    add("--precision", choices=PRECISIONS,
        help="number format of training: bf16 (bfloat16 autocast) or fp32. auto picks bf16 on CUDA and on "
             "CPUs with bfloat16 units (AMX or AVX512-BF16; 1.2 times faster on an AMX CPU in our CIFAR-10 benchmark), "
             "fp32 elsewhere (default: auto)")
    add("--seed", type=int, help="random seed (default: 0)")
    add("--workers", type=int, help="processes that decode images (default: number of cores, at most 8)")
    add("--lr", type=float,
        help="peak learning rate per 256 images. Training uses LR * global batch / 256 (linear scaling "
             "rule), where the global batch is --batch-size over all processes (default: 0.5)")
    add("--weight-decay", type=float, help="weight decay of the LARS optimiser (default: 1e-6)")
    add("--warmup-fraction", type=float, help="fraction of training spent warming up the learning rate (default: 0.05)")
    add("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm to this value; 0 disables (default: 0)")
    add("--nn-queue", type=int, metavar="SIZE",
        help="length of the nearest-neighbour queue; 0 disables the augmentation (default: 0)")
    add("--color-strength", type=float, metavar="S",
        help="scale of the colour jitter: brightness, contrast and saturation change by up to 0.4 * S, 0.4 * S "
             "and 0.2 * S, hue by 0.1 * S turns. Grayscale and solarisation keep DINO's probabilities for any "
             "S above 0, and exactly 0 turns them off with the jitter, for images whose colours tell the classes "
             "apart. Not used with --freeze-backbone on a ResNet (default: 1, DINO's recipe; at most 2)")
    add("--min-crop-scale", type=float, metavar="FRACTION",
        help="smallest fraction of the image area a global crop covers; raise it when a small crop "
             "could miss what tells the classes apart. Not used with --freeze-backbone on a ResNet (default: 0.2)")
    add("--row-tau", type=float, help="temperature of the softmax over classes (default: 0.1)")
    add("--col-tau", type=float, help="temperature of the softmax over the batch (default: 0.05)")
    add("--embedding-dim", type=int, help="dimension of the L2-normalised embedding (default: 128)")
    add("--hidden-dim", type=int,
        help="width of the projection MLP's hidden layers "
             "(default: twice the backbone's feature size; 1024 for patch-kmeans)")
    add("--hidden-layers", type=int, help="hidden layers in the projection MLP (default: 2)")
    add("--sync-batchnorm", action="store_true", default=None,
        help="synchronise BatchNorm statistics across processes in distributed training (CUDA only)")
    add("--init", metavar="WEIGHTS",
        help="start from these weights instead of random ones: 'imagenet' (torchvision's ImageNet weights of "
             "--backbone, resnet18 if auto; downloaded once, or read from torch.hub's cache), a weights file "
             "(a torchvision ResNet state dict or an official Self-Classifier checkpoint), or a run directory "
             "of this tool. Class heads are kept when their class counts equal --classes")
    add("--freeze-backbone", action="store_true", default=None,
        help="train only the projection and the heads, on backbone features computed once with --init's "
             "backbone and cached in RUN/features.npy, so an epoch does not run the backbone")
    add("--head-views", type=int, metavar="N",
        help="augmented views per image cached for --freeze-backbone and --backbone patch-kmeans, besides the "
             "plain image (default: 4)")
    add("--head-lr", type=float,
        help="peak learning rate per 256 images of --freeze-backbone and --backbone patch-kmeans training, "
             "which do not use --lr (default: 5.0)")
    add("--finetune", action="store_true", default=None,
        help="train the whole network from --init, the backbone at 0.1 times the learning rate")
    _add_timeout_option(parser)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return seconds


def _add_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dist-timeout", type=_positive_seconds, default=distributed.DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
        help="under torchrun, stop with an error when another process has not responded for this many "
             f"seconds (default: {distributed.DEFAULT_TIMEOUT_SECONDS:.0f})",
    )


def build_parser() -> argparse.ArgumentParser:
    # Without abbreviations, a mistyped option such as --epoch stops with an error
    # instead of being taken for --epochs.
    parser = argparse.ArgumentParser(
        prog="python -m core",
        allow_abbrev=False,
        description="Label an image folder without labels by training a Self-Classifier network.",
        epilog="label, train and assign also run on several processes or machines under torchrun, "
               "for example: torchrun --nproc_per_node=8 -m core train FOLDER --out RUN",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    label = commands.add_parser(
        "label", allow_abbrev=False, help="train on a folder, then assign its images and write labels.csv"
    )
    _add_training_options(label, "folder of images to label (sub-folders are searched too)")
    train = commands.add_parser(
        "train", allow_abbrev=False, help="train only; resumes if the run directory has a checkpoint"
    )
    _add_training_options(train, "folder of images to train on (sub-folders are searched too)")

    assign = commands.add_parser("assign", allow_abbrev=False, help="label a folder with a trained run")
    assign.add_argument("run", type=Path, help="run directory of a trained run")
    assign.add_argument("folder", type=Path, nargs="?", help="folder to label (default: the run's own folder)")
    assign.add_argument("--csv", type=Path, help="where to write the labels (default: RUN/labels.csv, for the run's "
                        "own folder only; another FOLDER needs --csv or --append)")
    assign.add_argument("--device", choices=DEVICES, default="auto", help="where to run the model (default: auto)")
    assign.add_argument("--workers", type=int, help="processes that decode images (default: the run's setting)")
    assign.add_argument(
        "--append", action="store_true",
        help="add the images of FOLDER that the run does not list yet to RUN/labels.csv and "
             "RUN/embeddings.npy, without retraining; images outside the run's image folder are "
             "stored with ../ paths relative to it",
    )
    _add_timeout_option(assign)

    evaluate = commands.add_parser(
        "evaluate", allow_abbrev=False,
        help="score labels.csv against parent-folder names (when they are the true classes)",
    )
    evaluate.add_argument("run", type=Path, help="run directory holding labels.csv")
    return parser


def config_overrides(args: argparse.Namespace) -> dict:
    """Return the TrainConfig fields set on the command line, by field name."""
    skip = {"command", "folder", "out", "verbose", "dist_timeout"}
    overrides = {}
    for option, value in vars(args).items():
        if option in skip or value is None:
            continue
        field = FIELD_OF_OPTION.get(option, option)
        overrides[field] = tuple(value) if field == "class_counts" else value
    return overrides


def option_of_field(field: str) -> str | None:
    """Return the command-line option that sets TrainConfig ``field``, or None when no option does."""
    if not field or field in FIELDS_WITHOUT_OPTION:
        return None
    return "--" + OPTION_OF_FIELD.get(field, field).replace("_", "-")


def _with_option(error: Exception) -> str:
    """Return the error message, starting with the option to fix when a single setting is invalid."""
    option = option_of_field(error.field) if isinstance(error, ConfigError) else None
    return f"invalid {option}: {error}" if option else str(error)


def _check_out(out: Path) -> None:
    """Raise ValueError when ``out``, or the nearest part of its path that exists, is a file."""
    existing = next((path for path in (out, *out.parents) if path.exists()), None)
    if existing is None or existing.is_dir():
        return
    where = "is a file" if existing == out else f"is inside {existing}, which is a file"
    raise ValueError(f"--out {out} {where}, not a folder. Give the path of a new or existing run folder.")


def _run_training(args: argparse.Namespace) -> None:
    _check_out(args.out)
    check_image_folder(args.folder)
    overrides = config_overrides(args)
    if overrides.get("init") not in (None, IMAGENET):
        overrides["init"] = str(Path(overrides["init"]).resolve())
    config = TrainConfig(image_folder=str(args.folder.resolve()), **overrides)
    config = jobs.load_or_create_config(args.out, config, overrides)
    if Path(config.image_folder).resolve() != args.folder.resolve():
        raise ValueError(
            f"{args.out} was trained on {config.image_folder}, not {args.folder}; use a new --out directory"
        )
    # The run directory and its log start only now, so a mistyped command, or a
    # folder without images, leaves no run folder behind.
    if not args.out.exists() and not contains_image_files(args.folder):
        raise ValueError(no_images_message(args.folder))
    args.out.mkdir(parents=True, exist_ok=True)
    with _locked(args.out):
        _setup_logging(args, RunFiles(args.out).log)
        _log_process_group()
        if args.command == "label":
            jobs.label(config, args.out)
            logger.info("Browse the classes with: %s. When the folder names are the true classes, "
                        "score them with: %s", app_command(), core_command("evaluate", args.out))
        else:
            jobs.train(config, args.out)
            logger.info("To write labels.csv with this network, run: %s", core_command("assign", args.out))


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock on the main process, which is the one that writes the run.

    Every process learns whether the main process got the lock, so under torchrun
    all of them stop with the same message when the run is busy. A missing
    directory is not locked, because the command then stops with its own error.
    """
    with ExitStack() as stack:
        busy = ""
        if distributed.is_main_process() and run_dir.is_dir():
            try:
                stack.enter_context(run_lock(run_dir))
            except RunBusyError as error:
                busy = str(error)
        busy = distributed.all_gather_objects(busy)[0]
        if busy:
            raise RunBusyError(busy)
        yield


def _run_append(args: argparse.Namespace) -> None:
    if args.folder is None:
        command = core_command("assign", args.run, "FOLDER", "--append")
        raise ValueError(f"--append needs the FOLDER of new images: {command}")
    if args.csv is not None:
        raise ValueError("--append adds rows to RUN/labels.csv; drop --csv")
    jobs.append(args.run, args.folder, args.device, args.workers)


def _setup_logging(args: argparse.Namespace, log_file: Path | None) -> None:
    """Log to ``log_file`` (a run's run.log) on the main process; other processes log only warnings and errors."""
    main_process = distributed.is_main_process()
    setup_logging(log_file if main_process else None, verbose=args.verbose)
    if not main_process and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)


def _log_process_group() -> None:
    if distributed.world_size() > 1:
        logger.info("Joined a process group of %d processes as rank %d (timeout %.0f s)",
                    distributed.world_size(), distributed.rank(), distributed.timeout_seconds())


def _assign_log_file(args: argparse.Namespace) -> Path | None:
    """Return the run.log of the run that ``assign`` reads, or None when that run directory does not exist."""
    if args.command != "assign" or not args.run.is_dir():
        return None
    return RunFiles(args.run).log


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    distributed.init_from_environment(getattr(args, "dist_timeout", distributed.DEFAULT_TIMEOUT_SECONDS))
    _setup_logging(args, _assign_log_file(args))
    if args.command not in ("label", "train"):
        _log_process_group()

    try:
        if args.command in ("label", "train"):
            _run_training(args)
        elif args.command == "assign" and args.append:
            with _locked(args.run):
                _run_append(args)
        elif args.command == "assign":
            with _locked(args.run):
                jobs.assign(args.run, args.folder, args.csv, args.device, args.workers)
        else:
            report = evaluate_run(args.run)
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        logger.error("%s", _with_option(error))
        return 2
    except TrainingDivergedError as error:
        logger.error("%s", error)
        return 1
    except KeyboardInterrupt:
        logger.error("Interrupted. %s", _interrupted_advice(args))
        return 130
    except RuntimeError as error:
        if distributed.world_size() == 1:
            raise
        logger.error(
            "Rank %d stopped: %s. Another process probably failed (see its output) or did not respond "
            "within --dist-timeout (%.0f s). The last checkpoint is kept. Run the same command "
            "again to resume.", distributed.rank(), error, distributed.timeout_seconds(),
        )
        return 1
    # The process group is left open on the error paths above: destroying it
    # can block on a peer that is gone, and the process is about to exit.
    distributed.shutdown()
    return 0
