"""The ``endd`` command line. Every user error ends in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent.futures import BrokenExecutor
from importlib import resources
from pathlib import Path

from endd import __version__
from endd.errors import EnddError

DESCRIPTION = """\
Ensemble Distribution Distillation (EnD²): train an ensemble, distill it into one Prior Network,
and compare accuracy and data/knowledge uncertainty of every model.

A run is a folder: config.yaml, ensemble/, teacher/, students/, predictions/, metrics.json,
report.md and figures/. Each stage skips what is done and resumes what was interrupted.
"""

EXAMPLES = """\
examples:
  endd demo                                   # the paper's spiral experiment → runs/demo
  endd run configs/spiral.yaml --out runs/s1 --set seed=1 --set students.epochs=100
  endd run configs/spiral.yaml --out runs/my --set data.name=npz --set data.path=my.npz
  endd evaluate runs/s1 --force               # rescore after changing the metrics code
"""


def builtin_config(name: str) -> Path:
    """Path of a config shipped with the package (``configs/<name>.yaml``)."""
    path = Path(str(resources.files("endd") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise EnddError(f"built-in config '{name}' not found")
    return path


def _add_run_options(parser: argparse.ArgumentParser, *, overrides: bool = True) -> None:
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="only warnings and errors: no progress bars"
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="also debug messages (and tracebacks)"
    )
    if overrides:
        _add_overrides(parser)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): one definition for run, demo and config show."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, dotted, value read as YAML (repeatable), "
        "e.g. --set students.epochs=100 --set data.ood=[far]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="endd",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"endd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="run the paper's artificial-dataset experiment (spirals) with a report",
        description="Train 10 MLPs on three noisy spirals, distill them into EnD, EnD², "
        "EnD²+AUX and Proxy students, evaluate and write a report (about 2 minutes on a laptop).",
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    _add_run_options(demo)

    run = commands.add_parser(
        "run",
        help="run every stage of a config into a run directory",
        description="Run ensemble → distill → evaluate → report for CONFIG into --out. "
        "Rerunning the same command skips finished stages and resumes an interrupted one.",
    )
    run.add_argument("config", help="YAML config file (see configs/)")
    run.add_argument("--out", required=True, help="run directory")
    _add_run_options(run)

    stage_help = {
        "ensemble": "train the ensemble and cache its logits on every split",
        "distill": "train the configured students from the cached teacher",
        "evaluate": "score every model and write metrics.json",
        "report": "write report.md and figures/ from metrics.json",
    }
    for stage, text in stage_help.items():
        sub = commands.add_parser(stage, help=text, description=f"{text[0].upper()}{text[1:]}.")
        sub.add_argument("run_dir", help="an existing run directory (made by `endd run`)")
        _add_run_options(sub, overrides=False)
        if stage in ("evaluate", "report"):
            sub.add_argument("--force", action="store_true", help="recompute even if present")

    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    download = data_commands.add_parser(
        "download",
        help="download a public dataset with checksum checks",
        description="Fetch a public dataset from its canonical address, verify its checksum and "
        "move it into place atomically.",
    )
    download.add_argument("name", help="dataset name, e.g. fashion_mnist, cifar10")
    download.add_argument("--root", required=True, help="folder to put the dataset in")
    download.add_argument("--base-url", default=None, help=argparse.SUPPRESS)
    _add_run_options(download, overrides=False)
    _add_config_commands(commands)
    _add_deploy_commands(commands)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN and --model: which trained model a deploy command takes out of which run."""
    parser.add_argument("run_dir", help="an existing run directory (made by `endd run`)")
    parser.add_argument(
        "--model", required=True, help="'ensemble' or a finished student, e.g. endd"
    )


def _add_deploy_commands(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="probabilities and uncertainty of a trained model for a file of new inputs",
        description="Run a run's model over raw inputs (the run's standardisation is applied) "
        "in batches and write an .npz with probs [N, K], alphas [N, K] (Prior Networks) and the "
        "measures the model has: total, data, knowledge, epkl, confidence [N].",
    )
    _add_model_arguments(predict)
    predict.add_argument(
        "--input",
        required=True,
        help="a .npy file, an .npz file with the array 'x', or a folder of images",
    )
    predict.add_argument("--out", required=True, help="the .npz file to write")
    predict.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="inputs per forward pass (default: the run's trainer.eval_batch_size)",
    )
    _add_run_options(predict, overrides=False)

    export = commands.add_parser(
        "export",
        help="one ONNX or TorchScript file: raw inputs to probabilities and uncertainty",
        description="Export a run's model as one graph from raw inputs (standardisation "
        "included) to named outputs (probs, alphas, total, data, knowledge, epkl, confidence: "
        "those the model has), dynamic batch axis. The file is checked against endd right after "
        "export and written only if every output agrees within 1e-4.",
    )
    _add_model_arguments(export)
    export.add_argument(
        "--format",
        required=True,
        metavar="onnx|torchscript",
        help="onnx (needs pip install 'endd[export]') or torchscript",
    )
    export.add_argument("--out", required=True, help="the file to write")
    _add_run_options(export, overrides=False)


def _add_config_commands(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="show a resolved config, or the config schema")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print CONFIG with the overrides applied and every default written out",
        description="Resolve CONFIG and the --set overrides exactly as `endd run` would and print "
        "the result as YAML (nothing is run or written).",
    )
    show.add_argument("config", help="YAML config file (see configs/)")
    _add_overrides(show)
    actions.add_parser(
        "schema",
        help="print the JSON schema of a config file",
        description="Print the JSON schema of a config file: every key, its type and default.",
    )


def _config_command(args: argparse.Namespace) -> None:
    import json

    from endd.config import config_schema, dump_config, load_yaml, resolve_config

    if args.config_command == "show":
        print(dump_config(resolve_config(load_yaml(args.config), args.overrides)), end="")
    else:
        print(json.dumps(config_schema(), indent=2))


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "config":
        _config_command(args)
        return
    from endd.config import load_yaml, resolve_config
    from endd.pipeline.distributed import is_rank_zero
    from endd.pipeline.run import run_stages
    from endd.store import RunDir

    if args.command in ("demo", "run"):
        out = Path(args.out)
        blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise EnddError(f"--out {out}: {blocked} is a file; give a folder for the run")
        path = builtin_config("spiral") if args.command == "demo" else args.config
        notices: list[str] = []  # shown once the data are known to be good: errors stay 1 line
        config = resolve_config(load_yaml(path), args.overrides, notices=notices)
        _tune_allocator(config)
        run = run_stages(args.out, config=config, notices=notices)
        if not args.quiet and is_rank_zero(config["trainer"]):
            print(f"report: {run.report}")
    elif args.command in ("ensemble", "distill", "evaluate", "report"):
        if not Path(args.run_dir).is_dir():
            raise EnddError(f"run directory not found: {args.run_dir}")
        if args.command in ("ensemble", "distill"):
            _tune_allocator(RunDir(Path(args.run_dir)).read_config())
        run_stages(args.run_dir, [args.command], force=getattr(args, "force", False))
    elif args.command == "data":
        from endd.data.download import download

        show = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
        path = download(args.name, args.root, base_url=args.base_url, progress=show)
        log.info("%s is in %s", args.name, path)
    elif args.command == "predict":
        from endd.deploy.predict import predict_file

        result = predict_file(
            args.run_dir, args.model, args.input, args.out, batch_size=args.batch_size
        )
        if not args.quiet:
            count = len(next(iter(result.values())))
            print(f"predictions: {args.out} ({count} inputs: {', '.join(result)})")
    elif args.command == "export":
        from endd.deploy.export import export_model

        exported = export_model(args.run_dir, args.model, args.format, args.out)
        if not args.quiet:
            print(f"exported: {exported.summary()}")


log = logging.getLogger("endd")


def _tune_allocator(config: dict) -> None:
    """Training on the CPU: keep freed memory in this process (once; the library never changes
    process-wide settings itself). See :mod:`endd.models.allocator`."""
    if config["trainer"]["accelerator"] == "cpu":
        from endd.models.allocator import keep_freed_memory

        keep_freed_memory()


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split())


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The ``endd`` logger's messages to stderr, once per process: INFO by default, WARNING
    with ``--quiet``, DEBUG with ``--verbose``. The library itself only logs."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for old in [h for h in log.handlers if getattr(h, "_endd_cli", False)]:
        log.removeHandler(old)
    handler._endd_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library deprecation chatter is not for users; spawned student processes inherit this.
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    verbose = getattr(args, "verbose", False)
    configure_logging(getattr(args, "quiet", False), verbose)
    _received.clear()
    previous = _stop_on_signals()
    try:
        _dispatch(args)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exit_:
        # Lightning ends a fit that Ctrl-C interrupted with sys.exit(1), after its own cleanup
        if _raised_by(exit_, KeyboardInterrupt) or _received:
            return _interrupted()
        raise
    except Exception as err:
        if _received:
            # stopping: what failed on the way is part of the stop (with several processes a
            # collective fails first when the other ranks stop a moment sooner)
            return _interrupted()
        if verbose or not isinstance(err, (EnddError, ValueError, OSError, BrokenExecutor)):
            raise
        if isinstance(err, BrokenExecutor):
            # a student worker process died (killed, out of memory): its checkpoints are on disk
            print(f"endd: error: {WORKER_DIED}", file=sys.stderr)
            return 1
        # OSError: a path that is a file where a folder is wanted, no permission, a full disk:
        # the user's environment, said in one line (-v shows the traceback)
        print(f"endd: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


WORKER_DIED = (
    "a student worker process died (killed, or out of memory?); "
    "rerun the same command to resume from the last checkpoints"
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler cancelling or pre-empting the job), raised in the
    main thread and unwound exactly as Ctrl-C is: every write in progress deletes its temporary
    file, student workers are stopped, Lightning ends its fit."""


#: The signals received that stop this run (SIGINT, SIGTERM), in order.
_received: list[int] = []


def _stop_on_signals() -> dict[int, object]:
    """Handle SIGTERM as Ctrl-C (see :class:`Terminated`) in this process, and note either
    signal when it arrives; returns the handlers replaced. SIGINT is left alone where it is
    ignored (``nohup``, a background job). A second signal during the unwinding is ignored:
    SIGKILL is the way to cut it short."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers: the defaults stay

    def stop(signum, frame) -> None:
        _received.append(signum)
        for number in replaced:
            signal.signal(number, signal.SIG_IGN)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    replaced = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        replaced[signal.SIGINT] = signal.default_int_handler
    for number in replaced:
        signal.signal(number, stop)
    return replaced


def _interrupted() -> int:
    """Ctrl-C: one line, exit status 130 (128 + SIGINT) like a shell's interrupted command;
    SIGTERM: 143 (128 + SIGTERM)."""
    error = sys.exc_info()[1]
    if _raised_by(error, Terminated) or signal.SIGTERM in _received:
        print("endd: terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
        return 143
    print("endd: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130


def _raised_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether ``error`` is a ``kind`` or was raised while handling one (its causes and
    contexts)."""
    seen: set[int] = set()
    cause = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, kind):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
