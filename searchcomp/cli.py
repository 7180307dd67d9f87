"""Command line: parse arguments, call the API, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from searchcomp.config import SAMPLERS
from searchcomp.errors import SearchcompError


def _add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="the space file (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the space file, e.g. --set data.train_size=2000 "
                        "(repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="small subsets and short fine-tunes (the space's quick: section and "
                        "its own study, <name>-quick)")


def build_parser() -> argparse.ArgumentParser:
    """The ``searchcomp`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="searchcomp",
        description="Multi-objective compression search for PyTorch CNNs.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="show blocks, choices, space size and base metrics "
                                       "(trains nothing)")
    _add_space(p)
    _add_json(p)

    p = sub.add_parser("run", help="run (or resume) the search: trials until --trials are done")
    _add_space(p)
    _add_study(p)
    p.add_argument("--trials", type=int, help="finished trials wanted in the study in total")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S s")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--seed", type=int, help="sampler and trial seed")
    p.add_argument("--strategy", choices=["search", "rungs", "greedy"], default=None,
                   help="search: every candidate fully fine-tuned; rungs: multi-fidelity "
                        "(most candidates stop at a cheap rung); greedy: the source's rule "
                        "(default: the space's search.strategy)")
    p.add_argument("--budget", type=float, metavar="E",
                   help="stop starting candidates once E full fine-tunes' worth of steps are "
                        "spent (default: the space's search.budget; none)")
    p.add_argument("--threshold", type=float,
                   help="greedy: keep a swap if validation accuracy >= this (default 0.70)")
    p.add_argument("--max-drop", type=float, metavar="D",
                   help="greedy: keep a swap if validation accuracy >= the base's minus D")
    p.add_argument("--greedy-form", choices=["cumulative", "rebuild"], default="cumulative",
                   help="greedy: each step starts from the last kept step's fine-tuned model "
                        "(cumulative, as the source; default) or from the base (rebuild)")
    p.add_argument("--target", metavar="LIMITS",
                   help='spend the trials in a region, e.g. "size_mib<=2,latency_ms<=5" '
                        "(the surrogate sampler)")
    p.add_argument("--quiet", action="store_true", help="no bars, one line per trial")
    _add_json(p, "what the run did (the log goes to stderr)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: trials in this process (default); ray: Ray Tune workers")
    p.add_argument("--address", help="ray: join this cluster (default: start Ray locally)")
    p.add_argument("--concurrency", type=int, default=2, help="ray: trials at once (default 2)")
    _add_device(p)
    p.add_argument("--cpus-per-trial", type=float, default=1, help="ray: CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="ray: GPUs per trial")

    p = sub.add_parser("profile", help="the sensitivity table: every single change per block, "
                                       "briefly recovered and scored (kept with the study)")
    _add_space(p)
    p.add_argument("--study", metavar="NAME", help="study name (default: the space's name)")
    _add_json(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(p)

    p = sub.add_parser("front", help="the Pareto front of the study as a table or JSON; with "
                                     "limits, the best point within them")
    _add_space(p)
    _add_study(p)
    _add_json(p)
    p.add_argument("--remeasure", action="store_true",
                   help="measure the front's latency again first, one model at a time, once "
                        "no trial of the study runs on this machine")
    p.add_argument("--max-size-mib", type=float, metavar="X", help="budget: at most X MiB")
    p.add_argument("--max-latency-ms", type=float, metavar="Y", help="budget: at most Y ms")
    p.add_argument("--max-params", type=float, metavar="N", help="budget: at most N params")
    p.add_argument("--min-accuracy", type=float, metavar="A",
                   help="budget: validation accuracy at least A")
    p.add_argument("--confirm", type=int, metavar="K",
                   help="first fine-tune every front point K more times with new seeds "
                        "(linked trials, not counted toward --trials; a rerun makes only the "
                        "missing ones), then show each point's mean and spread")
    p.add_argument("--quiet", action="store_true", help="--confirm: no progress bars")
    _add_device(p)

    p = sub.add_parser("dashboard", help="optuna-dashboard on the study's storage (localhost)")
    _add_space(p)
    _add_study(p)
    p.add_argument("--port", type=int, default=8080)

    p = sub.add_parser("export", help="take one trial away as a real, smaller model")
    _add_space(p)
    _add_study(p)
    p.add_argument("--trial", type=int, required=True, help="the trial number (see 'front')")
    p.add_argument("--out", required=True, metavar="DIR", help="a folder that does not exist")
    p.add_argument("--format", choices=["state_dict", "torchscript", "onnx", "onnx-int8"],
                   help="the artifact (default: the one the trial was measured on, i.e. of "
                        "measure.runtime: torch -> state_dict, onnxruntime -> onnx, "
                        "onnxruntime-int8 -> onnx-int8)")
    p.add_argument("--finetune-epochs", type=float, default=0, metavar="E",
                   help="fine-tune E more epochs before exporting (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_json(p, "the model card")
    _add_device(p)

    p = sub.add_parser("report", help="one self-contained HTML page: front plots, choices, table")
    _add_space(p)
    _add_study(p)
    p.add_argument("--out", metavar="FILE", help="default: studies/<study>/report.html")
    _add_json(p, "where the report was written")
    return parser


def _add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true",
                   help=f"print one JSON object on stdout: {what}; logs go to stderr")


#: the document of a --json command, printed by :func:`main` once the command is done
_DOCUMENT: list[str] = []


def _print_json(obj) -> None:
    """Hand the one document of a --json command to :func:`main`, which prints it on stdout
    as strict JSON (a NaN or infinite figure becomes null, which every parser reads)."""
    from searchcomp.console import json_text

    _DOCUMENT.append(json_text(obj))




def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="DEV",
                   help="where training and evaluation run: auto, cpu, cuda, cuda:N or mps "
                        "(default: the space's device, itself auto by default)")


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: sqlite under studies/<study>/)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the space's name)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"searchcomp {version('searchcomp')}"
    except PackageNotFoundError:
        return "searchcomp (not installed)"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from searchcomp.overview import inspect_space
    space = _load(args)
    report = inspect_space(space, progress=None if args.json else _stderr)
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.to_text())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from searchcomp.search.api import run_search
    space = _load(args)
    if args.trials is not None and args.trials < 1:
        raise SearchcompError("--trials must be >= 1")
    if args.budget is not None and args.budget <= 0:
        raise SearchcompError("--budget must be > 0 (full fine-tune equivalents)")
    if args.strategy != "greedy" and (args.threshold is not None or args.max_drop is not None):
        raise SearchcompError("--threshold and --max-drop are for --strategy greedy")
    if args.strategy == "greedy" and args.target:
        raise SearchcompError("--target is for the search, not --strategy greedy")
    if args.backend == "ray" and args.strategy == "greedy":
        raise SearchcompError("--strategy greedy is sequential by nature; run it without "
                              "--backend ray")
    if args.concurrency < 1 or args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise SearchcompError("--concurrency must be >= 1, --cpus-per-trial > 0, "
                              "--gpus-per-trial >= 0")
    try:
        summary = run_search(space, trials=args.trials, timeout_s=args.timeout,
                             storage=args.storage, study_name=args.study, sampler=args.sampler,
                             seed=args.seed, strategy=args.strategy, budget=args.budget,
                             threshold=args.threshold,
                             quiet=args.quiet, log=_stderr, backend=args.backend,
                             max_drop=args.max_drop, greedy_form=args.greedy_form,
                             target=args.target,
                             ray_options={"address": args.address,
                                          "concurrency": args.concurrency,
                                          "cpus_per_trial": args.cpus_per_trial,
                                          "gpus_per_trial": args.gpus_per_trial},
                             device=args.device)
    except KeyboardInterrupt:
        _stderr("interrupted: finished trials are kept; run the same command to continue")
        return 130
    why = {"exhausted": "; stopped: the search space is exhausted",
           "timeout": "; stopped: --timeout reached",
           "budget": "; stopped: the compute budget is spent",
           "attempts": "; stopped: too many trials that do not count (see the lines above)"}
    _stderr(f"done: {summary.ran} trial(s) run now, {summary.done} finished in study "
            f"{summary.study} ({summary.storage}){why.get(summary.stopped or '', '')}")
    extra = "".join(f" --{k} {v}" for k, v in (("study", args.study), ("storage", args.storage))
                    if v)
    quick = " --quick" if args.quick else ""
    _stderr(f"next: searchcomp front {args.space}{quick}{extra}")
    if args.json:
        from dataclasses import asdict

        _print_json(asdict(summary))
    return 0


def _cmd_front(args: argparse.Namespace) -> int:
    from searchcomp.results.study import load_results
    space = _load(args)
    if args.remeasure:
        from searchcomp.search.api import remeasure_study

        remeasure_study(space, storage=args.storage, study_name=args.study, log=_stderr)
    if args.confirm is not None:
        _confirm(space, args)
    limits = {"size_mib": args.max_size_mib, "latency_ms": args.max_latency_ms,
              "params": args.max_params}
    if any(v is not None for v in limits.values()) or args.min_accuracy is not None:
        from searchcomp.predict.budget import Budget
        from searchcomp.results.budget import answer_budget

        if any(v is not None and v <= 0 for v in limits.values()) or not (
                args.min_accuracy is None or 0 <= args.min_accuracy <= 1):
            raise SearchcompError("--max-* limits must be > 0 and --min-accuracy in [0, 1]")
        budget = Budget({k: float(v) for k, v in limits.items() if v is not None},
                        args.min_accuracy)
        answer = answer_budget(space, budget, storage=args.storage, study_name=args.study)
        if args.json:
            _print_json(answer.to_json())
        else:
            print(answer.to_text())
        return 0
    res = load_results(space, storage=args.storage, study_name=args.study, check_latency=True)
    if args.json:
        _print_json(res.to_json())
    else:
        print(res.to_text())
    return 0


#: rounds of "confirm the front, recompute it" before showing a front that still moves
CONFIRM_ROUNDS = 3


def _confirm(space, args: argparse.Namespace) -> None:
    """``front --confirm K``: the confirmation runs of the front's points."""
    from searchcomp.results.study import load_results
    from searchcomp.search.api import confirm_study

    if args.confirm < 1:
        raise SearchcompError(f"--confirm must be >= 1, got {args.confirm}")
    ran, numbers = 0, []
    # the means can move the front: points that join it are confirmed too (a few rounds)
    for _ in range(CONFIRM_ROUNDS):
        res = load_results(space, storage=args.storage, study_name=args.study)
        numbers = [int(r["trial"]) for r in res.front]
        try:
            now = confirm_study(space, numbers, args.confirm, storage=args.storage,
                                study_name=args.study, log=_stderr, device=args.device,
                                progress=not args.quiet)
        except KeyboardInterrupt:
            _stderr("interrupted: the runs made so far are kept; run the same command to go on")
            raise
        ran += now
        if not now:
            break
    _stderr(f"confirm: {ran} run(s) made now; {args.confirm} run(s) made for each of the "
            f"{len(numbers)} front point(s) (the table below: their means and spreads)")


def _cmd_profile(args: argparse.Namespace) -> int:
    from searchcomp.results.sensitivity import to_json, to_text
    from searchcomp.search.profile import profile_space

    space = _load(args)
    try:
        res = profile_space(space, study_name=args.study, log=_stderr, progress=not args.quiet,
                            device=args.device)
    except KeyboardInterrupt:
        _stderr("interrupted: the rows computed so far are kept; run the same command to go on")
        return 130
    if args.json:
        _print_json(to_json(res))
    else:
        print(to_text(res))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from searchcomp.results.dashboard import serve
    space = _load(args)
    serve(space, port=args.port, storage=args.storage, study_name=args.study, log=_stderr)
    return 0


_LOADED: dict = {}


def _load(args: argparse.Namespace):
    """Load the space the command names; later errors that name a field get its line."""
    from searchcomp.config import load_space

    space = load_space(args.space, args.overrides, quick=getattr(args, "quick", False))
    _LOADED["space"] = space
    return space


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from searchcomp.results.export import export_trial

    space = _load(args)
    card = export_trial(space, args.trial, Path(args.out), args.format, args.finetune_epochs,
                        args.storage, args.study, log=_stderr, progress=not args.quiet,
                        device=args.device)
    if args.json:
        _print_json(card)
    else:
        print(Path(args.out) / "card.md")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from searchcomp.results.report import write_report

    space = _load(args)
    path = write_report(space, out=Path(args.out) if args.out else None, storage=args.storage,
                        study_name=args.study)
    _stderr(f"report written: {path} (self-contained; open it in any browser)")
    if args.json:
        _print_json({"report": str(path), "study": args.study or space.name})
    return 0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COMMANDS = {"inspect": _cmd_inspect, "run": _cmd_run, "profile": _cmd_profile,
            "front": _cmd_front,
            "dashboard": _cmd_dashboard, "report": _cmd_report, "export": _cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``searchcomp`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "json", False):
            return _json_command(args)
        return COMMANDS[args.command](args)
    except SearchcompError as e:
        space = _LOADED.get("space")
        if space is not None:
            e = space.located(e)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _json_command(args: argparse.Namespace) -> int:
    """Run a --json command with every log on stderr, then print its one document on stdout."""
    from searchcomp.console import stdout_to_stderr

    _DOCUMENT.clear()
    with stdout_to_stderr():
        code = COMMANDS[args.command](args)
    if _DOCUMENT:
        print(_DOCUMENT[-1], flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
