"""The ``knunu`` command line: one subcommand per pipeline stage.

Every :class:`~knunu.errors.KnunuError` becomes one line on stderr and exit code 2.
Nothing here invents a result.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import dask.config

from knunu import __version__
from knunu.config import load_config
from knunu.errors import KnunuError
from knunu.logs import ShowOnce
from knunu.pipeline import STEPS
from knunu.rundir import DISK_FULL, run_lock

log = logging.getLogger("knunu.cli")

EXIT_OK, EXIT_ERROR = 0, 2


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a workspace: the one given, the config's, or the run's own from its histograms."""
    from knunu.fits.report import fit_workspace_file
    from knunu.pipeline import own_workspaces
    from knunu.rundir import from_a_run

    config = load_config(args.config)
    run_dir = Path(args.output or config["output_dir"])
    workspace = args.workspace or config["fit"]["workspace"]
    source = workspace  # where the data come from
    if workspace is None:
        source = Path(args.histograms or run_dir / "histograms.root")
        workspace, _ = own_workspaces(config, run_dir, source)
    # data from a run (this one's or another's) are pseudo-data: blind unless unblinded
    blind = from_a_run(source, run_dir) and bool(config.get("blind", True)) and not args.unblind
    summary = fit_workspace_file(
        workspace,
        run_dir / "fit",
        analyses=args.analysis,
        cls_level=config["fit"]["cls_level"],
        with_impacts=args.impacts,
        toys=config["fit"]["gof_toys"] if args.toys is None else args.toys,
        toy_analyses=tuple(config["fit"]["gof_analyses"]),
        seed=config["seed"],
        blind=blind,
    )
    if blind:
        print(f"{source}: data from a run, BLINDED (mu and what depends on it hidden; --unblind)")
    print(summary.markdown)
    print(f"\nresults written to {summary.directory}")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """Produce the MC and pseudo-data ntuples of the configured scale on a Dask cluster."""
    from knunu.cluster import get_client
    from knunu.simulation.production import plan_production, run_production

    config = load_config(args.config)
    if args.scale:
        config["scale"] = args.scale
    backend = args.cluster or config["cluster"]
    out = Path(args.output or config["output_dir"]) / "ntuples"
    plan = plan_production(config, out)
    events = sum(t.n_events for t in plan.files)
    print(
        f"{config['scale']} scale: {len(plan.libraries)} decay libraries, "
        f"{len(plan.files)} files, {events} events, on {backend}"
    )
    with get_client(backend) as client:
        catalogue = run_production(plan, client, ProgressPrinter())
    print(f"catalogue written to {catalogue}")
    return EXIT_OK


def _run_dir(args: argparse.Namespace, config: dict) -> Path:
    return Path(args.output or config["output_dir"])


def _check_catalogue(run_dir: Path, args: argparse.Namespace | None = None) -> None:
    """Import the user's catalogue (``--catalogue``); fail with one line when there is none.

    Checked before any cluster starts.
    """
    from knunu.processors.run import Catalogue

    target = run_dir / "ntuples" / "catalogue.json"
    if args is not None and getattr(args, "catalogue", None):
        from knunu.catalogue import import_catalogue

        import_catalogue(args.catalogue, target)
        print(f"imported {args.catalogue} into {target}", file=sys.stderr)
    Catalogue.load(target)


@contextlib.contextmanager
def _client(args: argparse.Namespace, config: dict) -> Iterator[Any]:
    """A client on the chosen backend; says where its dashboard is."""
    from knunu.cluster import get_client

    backend = args.cluster or config["cluster"]
    with get_client(backend) as client:
        print(f"{backend} Dask cluster, dashboard: {client.dashboard_link}", file=sys.stderr)
        yield client


class ProgressPrinter:
    """Processor-run progress on stderr: a live line on a terminal, every 10 % in batch logs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown: dict[str, int] = {}

    def __call__(self, p: Any) -> None:
        """Show one :class:`knunu.progress.Progress`."""
        line = (
            f"{p.label}: {p.chunks_done}/{p.chunks_total} {p.unit}, "
            f"{p.events_done}/{p.events_total} events, {p.rate_hz:,.0f} events/s"
        )
        finished = p.chunks_done == p.chunks_total
        if self.tty:
            self.stream.write(f"\r{line}" + ("\n" if finished else ""))
        else:
            decile = 10 * p.chunks_done // max(p.chunks_total, 1)
            if self.shown.get(p.label) == decile:
                return
            self.shown[p.label] = decile
            self.stream.write(line + "\n")
        self.stream.flush()


def _skip_option(args: argparse.Namespace, config: dict) -> dict:
    if getattr(args, "skip_bad_inputs", False):
        config["processing"]["skip_bad_inputs"] = True
    return config


def _stage(args: argparse.Namespace, stage: Callable[..., Any]) -> tuple[Path, Any]:
    """Run one stage of ``knunu.pipeline`` on the run's catalogue, on the cluster.

    Returns the run directory and what the stage returned.
    """
    config = _skip_option(args, load_config(args.config))
    run_dir = _run_dir(args, config)
    _check_catalogue(run_dir, args)
    with _client(args, config) as client:
        return run_dir, stage(config, run_dir, client, ProgressPrinter())


def cmd_train(args: argparse.Namespace) -> int:
    """Training tables on the cluster, then the ITA and HTA models."""
    from knunu.pipeline import train_stage, training_summary

    run_dir, summary = _stage(args, train_stage)
    print(f"models written to {run_dir / 'models'}")
    print("\n".join(line.strip() for line in training_summary(summary)))
    return EXIT_OK


def cmd_process(args: argparse.Namespace) -> int:
    """The HTA and ITA processors on the cluster into the run's histogram file."""
    from knunu.pipeline import process_stage, process_summary

    run_dir, report = _stage(args, process_stage)
    lost = report.events_lost
    for ds, n in report.events_processed.items():
        extra = f", {lost[ds]} LOST" if lost[ds] else ""
        print(f"{ds:16s} {n:>10d} of {report.events_in[ds]:>10d} events processed{extra}")
    for item in report.lost:
        print(f"lost {item.events} events of {item.dataset}: {item.reason}")
    print(
        f"{report.chunks} chunks ({report.chunks_from_checkpoint} from checkpoints, "
        f"{report.retries} retried reads), {report.wall_seconds:.1f} s wall, "
        f"{report.throughput_hz:.0f} events/s; histograms in {run_dir / 'histograms.root'}"
    )
    print("\n".join(process_summary(run_dir)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run every stage that is not up to date, in order, then write the report.

    The cluster starts only when a stage that needs it runs.
    """
    from knunu.pipeline import run_analysis

    config = _skip_option(args, load_config(args.config))
    if args.cluster:
        config["cluster"] = args.cluster
    if args.output:
        config["output_dir"] = args.output
    if args.unblind:
        config["blind"] = False
    if args.catalogue:
        from knunu.catalogue import load_user_catalogue

        load_user_catalogue(args.catalogue)  # one line now, not after a cluster started
        config["catalogue"] = str(Path(args.catalogue).resolve())
    report = run_analysis(
        config, ProgressPrinter(), force=args.force, client_factory=lambda: _client(args, config)
    )
    print(report)
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    """Start a Dask cluster from the registry, run a check task, print where it is."""
    from knunu.cluster import cluster_check

    config = load_config(args.config)
    backend = args.cluster or config["cluster"]
    print(cluster_check(backend, n_workers=args.workers))
    return EXIT_OK


def cmd_reinterpret(args: argparse.Namespace) -> int:
    """WET couplings and B+ -> K+ X on the published likelihood and on the run's own."""
    from knunu.reinterpret.run import (
        check_run,
        published_source,
        reinterpret,
        run_source,
        write_maps,
    )

    config = load_config(args.config)
    run_dir = Path(args.output or config["output_dir"])
    cfg = dict(config["reinterpret"])
    if args.grid is not None:
        cfg["grid"] = cfg["grid_2d"] = args.grid
    if args.masses is not None:
        cfg["masses"] = {**cfg["masses"], "n": args.masses}
    which = args.likelihood or ["published", "run"]
    if "run" in which:  # before the published likelihood's long scans
        check_run(run_dir)
    out = run_dir / "reinterpret"
    for name in dict.fromkeys(which):
        if name == "published":
            source = published_source()
        else:
            source = run_source(run_dir, args.unblind, config["measurement"]["expected_mu"])
            write_maps(source, out / "maps")
        summary = reinterpret(source, out / name, cfg)
        print(summary.markdown)
        print(f"results written to {summary.directory}\n")
    return EXIT_OK


def cmd_checksum(args: argparse.Namespace) -> int:
    """Add the Adler-32 of every local file to a catalogue; verify the ones it has."""
    from knunu.processors.run import add_checksums

    done = add_checksums(args.catalogue)
    print(
        f"{args.catalogue}: {done.added} checksum(s) added, {done.verified} verified, "
        f"{done.remote} remote file(s) left without one"
    )
    return EXIT_OK


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


#: One argument: its flags and ``add_argument``'s keywords.
_Arg = tuple[tuple[str, ...], dict[str, Any]]

_OUTPUT: _Arg = (
    ("-o", "--output"),
    {"metavar": "DIR", "help": "run directory (default: output_dir)"},
)
_SKIP: _Arg = (
    ("--skip-bad-inputs",),
    {
        "action": "store_true",
        "help": "bad input files or chunks are listed in the report and the run goes on "
        "(default: processing.skip_bad_inputs, false: they fail the run)",
    },
)
_CATALOGUE: _Arg = (
    ("--catalogue",),
    {
        "metavar": "YAML",
        "help": "a user dataset catalogue (YAML: files, tree, layout, aliases, luminosity or "
        "cross section and generated events) imported into the run instead of simulating",
    },
)


def _flag(name: str, help_: str) -> _Arg:
    return ((name,), {"action": "store_true", "help": help_})


#: The subcommands: (function, help, arguments), in the order ``knunu --help`` lists them.
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, tuple[_Arg, ...]]] = {
    "simulate": (
        cmd_simulate,
        STEPS["simulate"].help,
        (
            (
                ("--scale",),
                {"choices": ["tiny", "default", "belle2"], "help": "override the scale"},
            ),
            _OUTPUT,
        ),
    ),
    "train": (cmd_train, STEPS["train"].help, (_OUTPUT, _SKIP, _CATALOGUE)),
    "process": (cmd_process, STEPS["process"].help, (_OUTPUT, _SKIP, _CATALOGUE)),
    "fit": (
        cmd_fit,
        STEPS["fit"].help,
        (
            (("--workspace",), {"metavar": "FILE", "help": "a pyhf workspace JSON to fit"}),
            (
                ("--histograms",),
                {"metavar": "FILE", "help": "processors' histogram file to build workspaces from"},
            ),
            (
                ("--analysis",),
                {
                    "action": "append",
                    "choices": ["combined", "ita", "hta"],
                    "help": "which model(s) of the workspace to fit (repeatable; default: all "
                    "it holds)",
                },
            ),
            _flag("--impacts", "rank every nuisance by impact on mu"),
            (
                ("--toys",),
                {
                    "type": int,
                    "metavar": "N",
                    "help": "goodness-of-fit toys (default: fit.gof_toys)",
                },
            ),
            _OUTPUT,
            _flag(
                "--unblind",
                "show mu and what depends on it for data from a run (inside the run directory or "
                "any directory with a manifest.json; default: the config's `blind`: hidden)",
            ),
        ),
    ),
    "run": (
        cmd_run,
        "run the whole analysis end to end (what `make analysis` calls); stages whose outputs "
        "are up to date are skipped",
        (
            _SKIP,
            _CATALOGUE,
            _OUTPUT,
            _flag("--force", "run every stage, up to date or not"),
            _flag(
                "--unblind",
                "the unblind step: also fit the pseudo-data and print the observed mu, B and Z "
                "next to mu_true (default: the config's `blind`, true: expected results only)",
            ),
        ),
    ),
    "reinterpret": (
        cmd_reinterpret,
        "new physics in the likelihoods: Weak Effective Theory couplings (profiles, contours) "
        "and B+ -> K+ X limits versus m_X, on the published likelihood and the run's own",
        (
            (
                ("--likelihood",),
                {
                    "action": "append",
                    "choices": ["published", "run"],
                    "help": "which likelihood (repeatable; default: both; `run` needs a "
                    "finished `knunu run`)",
                },
            ),
            _flag(
                "--unblind",
                "fit the run's pseudo-data (default: its Asimov data at measurement.expected_mu)",
            ),
            (
                ("--grid",),
                {
                    "type": _at_least(3),
                    "metavar": "N",
                    "help": "scan points per coupling axis (>= 3)",
                },
            ),
            (
                ("--masses",),
                {
                    "type": _at_least(0),
                    "metavar": "N",
                    "help": "m_X points of the mass scan (>= 0)",
                },
            ),
            _OUTPUT,
        ),
    ),
    "cluster": (
        cmd_cluster,
        "start a Dask cluster, check it runs a task, print its address",
        ((("--workers",), {"type": int, "default": 2, "help": "number of workers to ask for"}),),
    ),
    "checksum": (
        cmd_checksum,
        "add the Adler-32 of every local file to a dataset catalogue (e.g. one written by hand "
        "for real ntuples) and verify the ones it has; every run then verifies them",
        ((("catalogue",), {"help": "the catalogue.json to complete"}),),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation), built from ``_COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="knunu",
        description="Belle II B+ -> K+ nu nubar (ITA + HTA) as a distributed columnar analysis.",
    )
    parser.add_argument("--version", action="version", version=f"knunu {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="STAGE", required=True)
    for name, (func, help_, arguments) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("-c", "--config", help="analysis YAML merged over the packaged default")
        p.add_argument("--cluster", metavar="NAME", help="Dask backend: local, slurm, htcondor")
        p.set_defaults(func=func)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``knunu`` command."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Dask logs every worker start at INFO; shown with -v only, so the progress line stays readable.
    # distributed sets its loggers' levels from dask config when it is imported (later, lazily).
    dask_level = level if args.verbose else logging.WARNING
    dask.config.set({"logging.distributed": logging.getLevelName(dask_level).lower()})
    for name in ("distributed", "dask_jobqueue"):
        logging.getLogger(name).setLevel(dask_level)
    once = ShowOnce()  # a warning repeated (a workspace built five times) is shown once
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    try:
        code, error = _dispatch(args)
    finally:
        for handler in handlers:
            handler.removeFilter(once)
    if once.repeats:
        log.warning("%d repeated warning lines not shown again", once.repeats)
    if error:  # the last line
        print(error, file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace) -> tuple[int, str | None]:
    """Run the command: (exit code, the one-line error); a knunu error or a full disk is 2."""
    try:
        if not hasattr(args, "output"):
            return args.func(args), None
        # one process at a time writes into a run directory
        with run_lock(args.output or load_config(args.config)["output_dir"]):
            return args.func(args), None
    except KnunuError as exc:
        return EXIT_ERROR, f"knunu: error: {exc}"
    except OSError as exc:  # a write outside knunu's atomic paths (a library's own file)
        if exc.errno not in DISK_FULL:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_ERROR, f"knunu: error: {where}disk full ({exc.strerror or exc})"
    except KeyboardInterrupt:
        return 130, "knunu: interrupted"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
