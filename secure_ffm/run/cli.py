"""The ``secure-ffm`` command line.

Bad input ends with one line on stderr (``error: <key>: <problem> (<fix>)``) and exit
code 2, before anything is written to the run directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from secure_ffm.errors import ConfigError, SecureFFMError  # noqa: E402
from secure_ffm.startup import collector_paused  # noqa: E402

EXIT_BAD_INPUT = 2
CommandFn = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, CommandFn] = {}
COMMAND_PARSERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}
"""Plugin commands (``attack``, ``sweep``, ``report``): name -> (help, function adding the arguments)."""


def command(
    name: str, *, help: str | None = None, configure: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[CommandFn], CommandFn]:
    """Register a subcommand; plugins pass ``help`` and ``configure`` to add their own parser."""

    def decorator(fn: CommandFn) -> CommandFn:
        COMMANDS[name] = fn
        if configure is not None:
            COMMAND_PARSERS[name] = (help or "", configure)
        return fn

    return decorator


class ProgressBars:
    """Draws a rounds bar and a per-round clients bar with tqdm (on stderr)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.rounds: Any = None
        self.clients: Any = None

    def run_started(self, total_rounds: int, start_round: int) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.rounds = tqdm(total=total_rounds, initial=start_round - 1, desc="rounds", unit="round", position=0)

    def round_started(self, round: int, clients: Sequence[int]) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.clients = tqdm(total=len(clients), desc=f"round {round} clients", unit="client", position=1, leave=False)

    def client_finished(self, round: int, client_id: int) -> None:
        if self.clients is not None:
            self.clients.update(1)

    def round_finished(self, round: int, metrics: Mapping[str, Any]) -> None:
        if self.clients is not None:
            self.clients.close()
            self.clients = None
        if self.rounds is not None:
            postfix = {"train_loss": _fmt(metrics.get("train_loss")), "test_acc": _fmt(metrics.get("test_accuracy"))}
            for key in ("epsilon", "epsilon_max"):
                if metrics.get(key) is not None:
                    postfix["eps"] = f"{metrics[key]:.2f}"
            self.rounds.set_postfix(postfix)
            self.rounds.update(1)
            if self.rounds.n >= self.rounds.total:
                self.rounds.close()


def _default_out_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_out_dir(out_dir: Path, *, resume: bool) -> None:
    """Refuse a run directory that cannot be written, that is not a run (``--resume``) or that holds files (a new run)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out", f"{out_dir} is a file, not a directory", "choose a new --out")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError("--out", f"{out_dir} cannot be created: {existing} is a file", "choose a --out whose parents are directories")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("--out", f"{out_dir} cannot be written: {existing} is not writable", "choose a --out you can write to")
    if resume:
        if not (out_dir / "config.toml").is_file():
            raise ConfigError("--resume", f"{out_dir} is not a run directory", "pass --out RUN_DIR of a run started by `secure-ffm train`")
    elif out_dir.exists() and any(not _atomic_leftover(p) for p in out_dir.iterdir()):
        raise ConfigError("--out", f"{out_dir} already exists and is not empty", "choose a new --out, or add --resume to continue that run")


def _atomic_leftover(path: Path) -> bool:
    """A temporary file of an atomic write (``.NAME.XXXXXXXX.tmp``) left by a process killed mid-write: not a run's file."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp")


@command("train")
def train_command(args: argparse.Namespace) -> int:
    with collector_paused():  # the imports and the set-up (secure_ffm.startup)
        from secure_ffm.config import check_local_paths, load_config
        from secure_ffm.run.simulation import Simulation, prepare_run, read_run_config

        if args.resume and args.out is None:
            raise ConfigError("--resume", "needs the run directory", "pass --out RUN_DIR of the run to resume")
        if args.out is not None and not args.out.strip():
            raise ConfigError("--out", "is empty", "pass a directory, e.g. --out runs/my-run")
        config = load_config(args.config, overrides=args.set)
        check_local_paths(config, beside=Path(args.config).parent)
        out_dir = Path(args.out) if args.out else _default_out_dir(config.run.name)
        check_out_dir(out_dir, resume=args.resume)
        if args.resume:
            read_run_config(out_dir, config)  # a damaged or different config.toml is refused before the data loads
        prepared = prepare_run(config)  # every data/model error is raised here, before anything is written
    simulation = Simulation(prepared, out_dir=out_dir, observer=ProgressBars(not args.quiet))
    summary = simulation.run(resume=args.resume)
    final = summary["final"]
    logging.getLogger("secure_ffm").info("run directory: %s", out_dir)
    print(
        f"{config.run.name}: {_scores(final)} after {summary['rounds']} rounds "
        f"({summary['update_parameters']:,} parameters sent per update)\n"
        f"run directory: {out_dir}"
    )
    return 0


@command("deploy")
def deploy_command(args: argparse.Namespace) -> int:
    """Run a config on a loopback Flower federation (SuperLink + one SuperNode per client) into a run directory."""
    with collector_paused():  # secure_ffm.startup
        from secure_ffm.config import check_local_paths, load_config
        from secure_ffm.flower.deploy import check_loopback, deploy

    if args.out is not None and not args.out.strip():
        raise ConfigError("--out", "is empty", "pass a directory, e.g. --out runs/my-deployment")
    if not args.timeout > 0:
        raise ConfigError("--timeout", f"{args.timeout} is not a positive number of seconds", "e.g. --timeout 600")
    config = load_config(args.config, overrides=args.set)
    check_local_paths(config, beside=Path(args.config).parent)
    check_loopback(config)
    out_dir = Path(args.out) if args.out else _default_out_dir(config.run.name)
    check_out_dir(out_dir, resume=False)
    if args.insecure:
        logging.getLogger("secure_ffm").warning("--insecure: no TLS and no SuperNode authentication; use it on loopback only")
    summary = deploy(
        config,
        out_dir=out_dir,
        secure=not args.insecure,
        timeout=args.timeout,
        progress=not args.quiet,
        node_data=[Path(p) for p in args.node_data] or None,
    )
    print(
        f"{config.run.name}: {_scores(summary['final'])} after {summary['rounds']} rounds on {config.data.num_clients} SuperNodes "
        f"({'insecure' if args.insecure else 'TLS, node authentication'})\n"
        f"run directory: {out_dir}"
    )
    return 0


def _new_key_folder(path: str) -> Path:
    """A folder to write keys into: new or empty (keys are never overwritten)."""
    directory = Path(path)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError("DIR", f"{directory} already exists and is not empty", "choose a new folder: existing keys are never overwritten")
    return directory


@command("certs")
def certs_command(args: argparse.Namespace) -> int:
    """Write a test federation's CA, SuperLink certificate and SuperNode authentication keys (docs/deployment.md)."""
    from secure_ffm.flower.certs import make_certificates
    from secure_ffm.flower.launch import write_node_key

    directory = _new_key_folder(args.dir)
    if not args.hosts or any(not h.strip() for h in args.hosts):
        raise ConfigError("--hosts", "names no host", "pass the SuperLink's address as the nodes reach it, e.g. --hosts server.example.org")
    if args.nodes < 0 or args.days < 1:
        raise ConfigError("--nodes" if args.nodes < 0 else "--days", "must be positive", "e.g. --nodes 3 --days 30")
    paths = make_certificates(directory, hosts=tuple(args.hosts), days=args.days)
    for k in range(args.nodes):
        write_node_key(directory, f"node{k}")
    print(
        f"wrote {paths.ca_certificate.name} (every node and the flwr CLI: --root-certificates), {paths.server_certificate.name} and "
        f"{paths.server_key.name} (the SuperLink), {paths.ca_key.name} (keep offline)"
        + (f", node0..node{args.nodes - 1} and their .pub (register each .pub with `flwr supernode register`)" if args.nodes else "")
        + f" in {directory}"
    )
    return 0


@command("ckks-keys")
def ckks_keys_command(args: argparse.Namespace) -> int:
    """Deal a CKKS key set for a deployment: the server's file (public context), the clients' file (under
    ``ckks_key_holder = "clients"`` the shared secret key) and, for a key authority, the authority's (the secret key)."""
    from secure_ffm.config import load_config
    from secure_ffm.flower.deploy import write_key_files

    config = load_config(args.config, overrides=args.set)
    if config.secure_aggregation.protocol != "ckks":
        raise ConfigError("secure_aggregation.protocol", "key files are for CKKS", 'set secure_aggregation.protocol = "ckks"')
    directory = _new_key_folder(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = write_key_files(config, directory)
    assert paths is not None
    who = {
        "server": "the server's: run config ckks-keys",
        "clients": "every client SuperNode's: --node-config ckks-keys; never the server",
        "authority": "the key authority's only: --node-config role=authority ckks-keys=...; never the server or a client",
    }
    print("\n".join(f"wrote {path} ({who[role]})" for role, path in paths.items()))
    return 0


@command("signing-keys")
def signing_keys_command(args: argparse.Namespace) -> int:
    """Write a federation's signing keys for masking's ``signatures``: every client's Ed25519 key (owner-only) and the
    key directory every party gets out of band (``secure_aggregation.peer_keys``)."""
    from secure_ffm.secagg.signing import write_signing_keys

    if args.clients < 1:
        raise ConfigError("--clients", f"must be at least 1, got {args.clients}", "give the number of clients (data.num_clients)")
    directory = _new_key_folder(args.dir)
    write_signing_keys(directory, args.clients)
    print(
        f"wrote peer_keys.json (public: every party's secure_aggregation.peer_keys) and client-0.key .. client-{args.clients - 1}.key "
        f"(each SuperNode its own: --node-config signing-key=...; never the server or another node) in {directory}"
    )
    return 0


@command("privacy")
def privacy_command(args: argparse.Namespace) -> int:
    """Print the noise multiplier a config implies and the ε it reaches, before any training; with ``--recommend``,
    DP-SGD's planner (:mod:`secure_ffm.privacy.planner`): for the smallest, median and largest client, the expected
    batch size and local steps per round of smallest noise-to-progress ratio r = z / (B·sqrt(T)) within ``--epochs``
    passes over the client's data, and the ``--set`` overrides that apply it. A client too small for the budget
    (r above ``NOISE_TO_PROGRESS_LIMIT``) gets a WARNING line; the exit code stays 0."""
    import json
    import math

    from secure_ffm.config import check_local_paths, load_config
    from secure_ffm.data import load_run_data
    from secure_ffm.privacy.mechanisms import build_mechanism

    if args.epochs is not None and not args.recommend:
        raise ConfigError("--epochs", "is the planner's compute budget and needs --recommend", "add --recommend")
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        raise ConfigError("--epochs", f"must be a positive number of passes over each client's data, got {args.epochs:g}", "use e.g. 1")
    config = load_config(args.config, overrides=args.set)
    check_local_paths(config, beside=Path(args.config).parent)
    data = load_run_data(config)
    mechanism = build_mechanism(config, data)
    if args.recommend:
        advice = mechanism.recommend(epochs=args.epochs)
        if advice is None:
            raise ConfigError(
                "--recommend",
                f"privacy.mode = {config.privacy.mode!r} has no batch-size planner (it plans DP-SGD's local training)",
                "add --set privacy.mode=dp-sgd",
            )
        print(json.dumps(advice, indent=1, default=str) if args.json else mechanism.format_recommendation(advice))
        return 0
    plan = mechanism.plan()
    from secure_ffm.engine.aggregation import PROTOCOLS
    from secure_ffm.engine.client import CLIENT_METRICS, ClientRules

    protocol = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol")
    rules = ClientRules.of(config, mechanism=type(mechanism), protocol=protocol)
    policy = rules.metrics_policy
    allowed = CLIENT_METRICS[policy]
    plan["client_metrics"] = {"policy": policy, "sent": sorted(allowed) if allowed is not None else "all"}
    plan["client_answer_limit"] = rules.answer_limit
    if args.json:
        print(json.dumps(plan, indent=1, default=str))
        return 0
    print(mechanism.format_plan(plan))
    sent = ", ".join(sorted(allowed)) if allowed is not None else "every metric, the training loss included, in the clear"
    print(f"clients send beside their updates: {sent} (privacy.client_metrics = {config.privacy.client_metrics!r} -> {policy})")
    if rules.answer_limit is not None:
        print(f"each client answers at most {rules.answer_limit} fit requests (the rounds its budget plans for), whatever the server asks")
    return 0


class PipelineProgress:
    """The pipeline's progress on stdout (a ``secure_ffm.run.pipeline.PipelineObserver``): one line per stage, with each
    stage's round bars (unless ``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def rounds(self, stage: Any) -> ProgressBars:
        return ProgressBars(not self.quiet)

    def stage_skipped(self, index: int, total: int, stage: Any, summary: Mapping[str, Any]) -> None:
        final = summary.get("final") or {}
        print(f"stage {index}/{total} {stage.name}: already complete, skipped ({_scores(final)})")

    def stage_started(self, index: int, total: int, stage: Any, *, resumed: bool) -> None:
        print(f"stage {index}/{total} {stage.name}: {'resuming' if resumed else 'running'} in {stage.run_dir}", flush=True)

    def stage_finished(self, index: int, total: int, stage: Any, summary: Mapping[str, Any], seconds: float) -> None:
        final = summary.get("final") or {}
        exported = f", model exported to {stage.run_dir / 'model'}" if stage.config.ffm.export else ""
        print(
            f"stage {index}/{total} {stage.name}: done in {seconds:.0f}s: {_scores(final)}{exported}",
            flush=True,
        )


@command("pipeline")
def pipeline_command(args: argparse.Namespace) -> int:
    """Validate a pipeline file whole, then run its stages not complete yet (docs/ffm.md, "Pipelines")."""
    with collector_paused():  # secure_ffm.startup
        from secure_ffm.run.pipeline import load_pipeline, run_pipeline

    if args.out is not None and not args.out.strip():
        raise ConfigError("--out", "is empty", "pass a directory, e.g. --out runs/my-pipeline")
    if args.out is None:
        from secure_ffm.config import read_toml

        raw = read_toml(args.pipeline, key="PIPELINE", fix="pass the path of a pipeline .toml")
        header = raw.get("pipeline", {})
        name = header.get("name") if isinstance(header, Mapping) and isinstance(header.get("name"), str) else Path(args.pipeline).stem
        out_dir = Path("runs") / f"pipeline-{name}"
    else:
        out_dir = Path(args.out)
    pipeline = load_pipeline(args.pipeline, out_dir)  # every stage validated: bad input exits 2 before anything is written
    if args.dry_run:
        for stage in pipeline.stages:
            state = "complete" if stage.complete else "interrupted" if stage.started else "to run"
            starts = f" (starts from {', '.join(stage.references)})" if stage.references else ""
            print(f"{stage.name}\t{state}\t{stage.run_dir}{starts}")
        print(f"{len(pipeline.stages)} stages; results would go to {out_dir}")
        return 0
    try:
        result = run_pipeline(pipeline, PipelineProgress(args.quiet))
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume (complete stages are kept in {out_dir})", file=sys.stderr)
        return 130
    final = result.document.get("final") or {}
    print(
        f"{pipeline.name}: {len(pipeline.stages)} stages: {len(result.ran)} ran, {len(result.skipped)} already complete; "
        f"final {_scores(final)}"
    )
    print(f"summary: {out_dir / 'pipeline.json'}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _scores(final: Mapping[str, Any]) -> str:
    """A run's final scores in one phrase: loss and perplexity for masked-language modelling, else accuracy and F1."""
    if final.get("test_perplexity") is not None:
        return f"test_loss={_fmt(final.get('test_loss'))} test_perplexity={_fmt(final.get('test_perplexity'))}"
    return f"test_accuracy={_fmt(final.get('test_accuracy'))} test_macro_f1={_fmt(final.get('test_macro_f1'))}"


class UsageError(SecureFFMError):
    """A command line argparse refuses (unknown flag, missing argument); ``prog`` is the (sub)command it was for."""

    def __init__(self, prog: str, message: str) -> None:
        self.prog = prog
        super().__init__(f"{message} (see `{prog} --help`)")


class OneLineParser(argparse.ArgumentParser):
    """argparse with the house contract: a bad command line is one ``error:`` line (not the usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="secure-ffm", description="Privacy-hardened federated learning for foundation models.")
    parser.add_argument(
        "--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS, help="logging level (DEBUG, INFO, WARNING, ERROR)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run federated training from a TOML config")
    train.add_argument("config", help="path of the TOML config, e.g. configs/quickstart.toml")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<run.name>-<timestamp>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    deploy = sub.add_parser(
        "deploy",
        help="run a config on a loopback Flower federation: a SuperLink and one SuperNode per client, as real processes",
        description="Starts flower-superlink and one flower-supernode per client on free loopback ports (TLS with a fresh test "
        "CA and SuperNode authentication unless --insecure), runs the config through them with the same orchestrator, "
        "protocols and mechanisms as `secure-ffm train`, writes the usual run directory (with the Flower logs in "
        "flower-logs/), and stops every process. See docs/deployment.md for real machines.",
    )
    deploy.add_argument("config", help="path of the TOML config")
    deploy.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    deploy.add_argument("--out", help="run directory (default: runs/<run.name>-<timestamp>)")
    deploy.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication (loopback debugging only)")
    deploy.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="seconds the server waits for one request's replies (default 600)"
    )
    deploy.add_argument(
        "--node-data",
        action="append",
        default=[],
        metavar="PATH",
        help="the data SuperNode k holds itself, given once per client in order (a file or folder read like data.dataset); "
        "data.dataset then serves the server alone (its test split and the run's classes)",
    )
    deploy.add_argument("--quiet", action="store_true", help="no progress bar")

    certs = sub.add_parser("certs", help="write a test federation's CA, SuperLink certificate and SuperNode keys")
    certs.add_argument("dir", help="an empty or new folder")
    certs.add_argument("--hosts", nargs="+", default=["127.0.0.1", "localhost"], help="the SuperLink's addresses (IPs or DNS names)")
    certs.add_argument("--nodes", type=int, default=0, help="SuperNode authentication key pairs to write (node0, node1, ...)")
    certs.add_argument("--days", type=int, default=30, help="validity of the certificates in days (default 30)")

    ckks_keys = sub.add_parser("ckks-keys", help="deal a CKKS key set for a deployment: the server's file and the clients' file")
    ckks_keys.add_argument("config", help="path of the TOML config (its [secure_aggregation] CKKS parameters)")
    ckks_keys.add_argument("dir", help="an empty or new folder")
    ckks_keys.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")

    signing_keys = sub.add_parser("signing-keys", help="write a federation's signing keys and key directory (masking's signatures)")
    signing_keys.add_argument("dir", help="an empty or new folder")
    signing_keys.add_argument("--clients", type=int, required=True, help="the number of clients (data.num_clients)")

    privacy = sub.add_parser("privacy", help="print the noise multiplier and ε a config implies, before training")
    privacy.add_argument("config", help="path of the TOML config")
    privacy.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    privacy.add_argument("--json", action="store_true", help="print the plan as JSON")
    privacy.add_argument(
        "--recommend",
        action="store_true",
        help="dp-sgd: recommend client.batch_size and client.local_steps for the smallest, median and largest client "
        "(smallest noise-to-progress ratio z / (B sqrt(T)) at the target ε)",
    )
    privacy.add_argument(
        "--epochs",
        type=float,
        metavar="E",
        help="with --recommend: compute budget in passes over each client's data (default: what the config implies)",
    )

    pipeline = sub.add_parser(
        "pipeline",
        help="run training stages in order, a later stage starting from an earlier one's export (e.g. FFM pre-training, then fine-tuning)",
        description="Runs the [[stage]] configs of a pipeline file in order into DIR/<stage>/; a stage names an earlier "
        'stage\'s exported model as model.name_or_path = "{stages.NAME.model}". The whole file is validated before '
        "anything runs; running it again skips complete stages and resumes an interrupted one. See docs/ffm.md.",
    )
    pipeline.add_argument("pipeline", help="pipeline file, e.g. configs/pipeline_pretrain_finetune.toml")
    pipeline.add_argument(
        "--out", help="pipeline directory (default: runs/pipeline-<pipeline.name>); an earlier run's directory resumes it"
    )
    pipeline.add_argument("--dry-run", action="store_true", help="validate the pipeline and list its stages, run nothing")
    pipeline.add_argument("--quiet", action="store_true", help="no progress bars")

    from secure_ffm.plugins import COMMANDS_GROUP, load_plugins

    load_plugins(COMMANDS_GROUP)  # attacks, eval: their commands register themselves
    for name, (help_text, configure) in sorted(COMMAND_PARSERS.items()):
        configure(sub.add_parser(name, help=help_text))
    return parser


def _one_line(text: str) -> str:
    """``text`` on one line: the contract is one ``error:`` line, whatever a path or a library message holds."""
    return " ".join(text.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"{error.prog}: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    level = getattr(logging, args.log_level, logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Library warnings (Opacus' RDP order notice, torch hook notices) go to the log, shown with --log-level DEBUG.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR if level > logging.DEBUG else logging.DEBUG)
    try:
        return COMMANDS[args.command](args)
    except SecureFFMError as error:
        print(f"secure-ffm {args.command}: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        # last resort: every path the user names is checked up front; should one still fail (a disk that
        # fills, a folder made read-only mid-run), name the path in one line rather than print a traceback
        if error.filename is None:
            raise
        print(f"secure-ffm {args.command}: error: {error.filename}: {error.strerror or error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


def console() -> None:
    """The ``secure-ffm`` executable: :func:`main`, then a fast exit.

    Tearing down a process that imported torch takes about half a second (its modules' and tensors' finalizers) after
    the run's files are written and closed. Once :func:`main` has returned - every file closed, every worker and
    Flower process stopped by the commands' own ``finally`` blocks - the output streams and the log handlers are
    flushed and the process ends without that teardown. An exception escaping :func:`main` exits the usual way."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        logging.shutdown()
        os._exit(code)
