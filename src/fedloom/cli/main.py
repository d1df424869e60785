"""The ``fedloom`` command line.

``fedloom run CONFIG.yaml [key=value ...]`` runs a simulation; ``fedloom partition CONFIG.yaml``
prints how the data is split over clients and writes a label-distribution plot;
``fedloom sweep SWEEP.yaml [--out DIR] [key=value ...]`` runs (or resumes) a sweep of runs and
writes its report; ``fedloom report DIR`` writes the report of a sweep directory again;
``fedloom server``, ``client``, ``certs`` and ``demo deploy`` run a deployment over gRPC
(:mod:`fedloom.cli.deploy`).

Exit codes (one table, for every subcommand):

=====  ==========================================
0      success
1      an unexpected internal error (a bug: traceback printed)
2      bad configuration or command line
3      data missing, corrupt or failing its checksum
4      a client, transport, aggregation or checkpoint failure
130    interrupted (Ctrl-C); completed rounds are kept
=====  ==========================================
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedloom.cli.common import report, run_config, start_workers_early
from fedloom.core.errors import ConfigError, DataError, FedloomError

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (DataError, 3),
    (FedloomError, 4),
    (KeyboardInterrupt, 130),
)

OVERRIDES_HELP = """\
overrides (dotted key=value, any number):
  rounds=N  seed=N  out=DIR  name=NAME
  data.name=mnist|fashion_mnist|synthetic|synthetic_iid|leaf_synthetic  data.dir=DIR
  data.num_clients=N  data.partition=iid|dirichlet|shards|quantity|natural
  data.alpha=X (Dirichlet concentration, or Synthetic's alpha)  data.beta=X (Synthetic's beta)
  data.shards_per_client=K  data.quantity_sigma=X  data.min_examples=N
  model.name=mlp|cnn|logreg  model.hidden=N
  algorithm.name=NAME  (fedavg, fedprox, scaffold, fednova, feddyn, fedavgm, fedadam, fedyogi,
    fedadagrad, qffl, ditto, fedasync, fedbuff, fedper, powd, ...: every registered algorithm)
  algorithm.<option>=X  (the algorithm's own options: server_lr, mu, lam, q, ...)
  state_dir=DIR  (per-client algorithm state in memory-mapped files)
  cohort.size=N
  client.epochs=E  client.steps=N|null  client.batch_size=B (0 = full batch)  client.lr=X
  client.momentum=X  client.weight_decay=X
  fleet.kind=serial|thread|process|vectorized|distributed  fleet.workers=N  fleet.threads=N
  fleet.share_dir=DIR  fleet.chunk=N  fleet.devices=cpu|cuda:0,cuda:1  fleet.vectorize=true
  fleet.aggregation=exact|reduce
  eval.every=N  eval.batch_size=N  eval.train=true  eval.federated=true
  checkpoint.every=N  (a checkpoint every N rounds: `fedloom run --resume RUN_DIR` continues)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedloom", description="Federated learning for PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run a federated simulation"),
                        ("partition", "show how a config splits the data over clients"),
                        ("topology", "print a config's topology (its federated groups) and "
                                     "draw it")):
        cmd = sub.add_parser(name, help=help_, epilog=OVERRIDES_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("config", nargs="?" if name == "run" else None,
                         help="YAML run config (e.g. configs/fedavg_mnist_2nn_iid.yaml)")
        cmd.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        if name == "run":
            cmd.add_argument("--quiet", action="store_true", help="no progress bar")
            cmd.add_argument("--resume", metavar="RUN_DIR",
                             help="continue a killed run from its checkpoint (a run started "
                                  "with checkpoint.every=N; same config, or none)")
        else:
            cmd.add_argument("--plot", type=Path, default=None,
                             help=f"where to write the plot (default: runs/<name>-{name}.png)")
    sweep = sub.add_parser("sweep", help="run a sweep of configs x seeds (resumes when rerun)",
                           epilog=OVERRIDES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("config", help="YAML sweep file (e.g. configs/sweep_example.yaml)")
    sweep.add_argument("overrides", nargs="*", help="dotted key=value overrides for every task")
    sweep.add_argument("--out", type=Path, default=None,
                       help="sweep directory (default: runs/<sweep name>); rerun to resume")
    sweep.add_argument("--quiet", action="store_true", help="no live table of the tasks")
    report = sub.add_parser("report", help="write report.html/.md and results.csv of a sweep")
    report.add_argument("dir", type=Path, help="sweep directory (the --out of fedloom sweep)")
    report.set_defaults(overrides=[])
    from fedloom.cli.deploy import add_commands  # parsers only: gRPC loads when a command runs

    add_commands(sub, OVERRIDES_HELP)
    return parser


def _run(args: argparse.Namespace) -> int:
    start_workers_early(args)  # before the imports below: they take torch's import time
    from fedloom.app.experiment import run_experiment

    result = run_experiment(run_config(args), console=not args.quiet, resume=args.resume)
    if result.served:  # a torchrun worker rank: rank 0 reports
        return 0
    return report(result)


def _partition(args: argparse.Namespace) -> int:
    from fedloom.app.config import load_config
    from fedloom.data import load_federated
    from fedloom.data.stats import format_partition_table, label_counts, plot_label_distribution

    cfg = load_config(args.config, args.overrides)
    data = load_federated(cfg.data, seed=cfg.seed)
    counts = label_counts(data.arrays().y.numpy(), [t.numpy() for t in data.client_train],
                          data.num_classes)
    print(format_partition_table(counts))
    plot = args.plot or Path("runs") / f"{cfg.name}-partition.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_label_distribution(counts, plot)
    print(f"label distribution plot: {plot}")
    return 0


def _topology(args: argparse.Namespace) -> int:
    from fedloom.app.config import load_config
    from fedloom.topology.config import TopologyKind
    from fedloom.topology.gossip import graph_links
    from fedloom.topology.plot import describe_graph, describe_tree, plot_graph, plot_tree
    from fedloom.topology.tree import build_tree

    cfg = load_config(args.config, args.overrides)
    topo = cfg.topology
    if topo is None:
        raise ConfigError(f"{args.config}: the config has no topology section")
    plot = args.plot or Path("runs") / f"{cfg.name}-topology.png"
    n = cfg.data.num_clients
    if topo.kind == TopologyKind.GOSSIP:
        links = graph_links(topo.graph, n, degree=topo.degree, rows=topo.rows,
                            links=topo.links, seed=cfg.seed)
        print(describe_graph(n, links))
        plot_graph(n, links, plot)
    else:
        tree = build_tree(topo, num_clients=n, seed=cfg.seed)
        print(describe_tree(tree))
        plot_tree(tree, plot)
    print(f"topology plot: {plot}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from fedloom.scheduler.task import SchedulerError
    from fedloom.sweeps.sweep import run_sweep

    outcome = run_sweep(args.config, out=args.out, overrides=args.overrides,
                        progress=not args.quiet)
    summary = outcome.summary
    print(f"{len(summary.finished)} finished, {len(summary.failed)} failed, "
          f"{len(summary.skipped)} already done, in {summary.seconds:.1f} s")
    print(f"report: {outcome.report.html}")
    if summary.failed:
        raise SchedulerError(f"{len(summary.failed)} task(s) failed: "
                             f"{', '.join(summary.failed[:5])}"
                             f"{' ...' if len(summary.failed) > 5 else ''} (stages and messages "
                             f"in {outcome.report.markdown}); run the same command to retry them")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedloom.reporting.report import write_report

    if args.overrides:
        raise ConfigError(f"report takes no key=value overrides (got {' '.join(args.overrides)})")
    files = write_report(args.dir)
    print(f"report: {files.html}\n        {files.markdown}\n        {files.csv}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from fedloom.cli.deploy import main as deploy_main

    return deploy_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may stand anywhere, also after options such as --quiet
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
    args = _parser().parse_args([a for a in argv if a not in overrides or a in argv[:2]])
    args.overrides = [*args.overrides, *overrides]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"run": _run, "partition": _partition, "topology": _topology, "sweep": _sweep,
                "report": _report,
                "server": _deploy, "edge": _deploy, "client": _deploy, "certs": _deploy,
                "demo": _deploy}[args.command](args)
    except BrokenPipeError:  # the reader went away (`fedloom ... | head`): nothing to say
        sys.stderr.close()
        return 0
    except (FedloomError, KeyboardInterrupt) as err:
        code = next(c for t, c in EXIT_CODES if isinstance(err, t))
        message = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
        print(f"fedloom: error: {message}" if code != 130 else f"fedloom: {message}",
              file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
