"""The ``erat`` command line: ``train``, ``eval``, ``energy``, ``report``, ``reproduce``,
``bench``. It parses and dispatches; the work is done by the modules it calls.

Errors a user can cause are one line on stderr, exit code 2; the environment's (no GPU,
disk full, read-only folder) exit code 1; a failed sanity check (evidence that the robust
accuracy is too high) exit code 3, after ``erat eval``'s result or ``erat reproduce``'s
report; SIGINT and SIGTERM 130 and 143 with one line (how to resume a training run, what a
bench's ``--json`` holds). ``--debug`` or ``ERAT_DEBUG=1`` shows the traceback; anything
else is a bug. Only the parser of the command given is built: ``erat --help`` imports no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erat.errors import UserError, exit_code, one_line_warning, reported, signals
from erat.fields import HelpFormatter, Parser, add_flags, add_options, number, path, radii

COMMANDS = {"train": "train a classifier with a robust-training method",
            "eval": "clean and robust accuracy of a trained run",
            "energy": "the energy (loss variation in the ball) of a trained run on test data",
            "report": "tables and plots from evaluated run folders",
            "reproduce": "run a named suite of experiments (resumable)",
            "bench": "ms per training step of each method, attack throughput"}
CHECKS_FAILED = 3  # exit code of an evaluation (or a suite) whose sanity checks failed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    args = argparse.Namespace(debug=False)
    with signals() as received:
        try:  # (building the parser imports torch: a Ctrl-C then is one line too)
            args = build_parser([command] if command else []).parse_args(argv)
            warnings.showwarning = one_line_warning
            return int(args.run(args) or 0)
        except BaseException as e:
            shown = reported(e, received)
            debug = args.debug or os.environ.get("ERAT_DEBUG", "") not in ("", "0")
            if shown is None or debug and (shown is not e or not isinstance(
                    shown, KeyboardInterrupt | BrokenPipeError)):
                raise
            return exit_code(shown, getattr(args, "hint", ""))  # (set by the command)


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the arguments of ``commands`` (default: every command; building one
    imports what it lists, so ``main`` builds only the command given)."""
    from erat import __version__

    parser = Parser(prog="erat", description="erat: energy-regularised adversarial training "
                    "and robustness evaluation")
    parser.add_argument("--version", action="version", version=f"erat {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        if commands is None or name in commands:
            globals()[f"_add_{name}"](p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")  # also after the command
    return parser


def _options(cls: type, args: argparse.Namespace) -> Any:
    """An options dataclass from the flags given (the others keep its defaults)."""
    import dataclasses

    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if getattr(args, f.name, None) is not None})


# ---------------------------------------------------------------------------- train
def _add_train(p: argparse.ArgumentParser) -> None:
    from erat.config import REGISTERED, TrainConfig
    from erat.fields import flag_specs
    from erat.fit import FitOptions
    from erat.methods import method_flags

    p.argument_default = argparse.SUPPRESS  # only what is given overrides --config
    p.add_argument("--out", required=True, type=path, help="run folder to write")
    p.add_argument("--config", type=path, help="YAML file of settings (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--stop-after", type=int, help="stop after this epoch (resume later)")
    defaults = TrainConfig().to_dict()
    found = flag_specs({"train": TrainConfig, "fit": FitOptions}, owners=False)
    specs = {k: found[k] for k in defaults if k in found}
    for name, names in REGISTERED.items():  # the registries are the one list of names
        specs[name] = specs[name]._replace(help=f"{specs[name].help}: {', '.join(names())}")
    add_flags(p, specs, defaults)
    add_flags(p.add_argument_group("method hyper-parameters (METHOD.md section 4; each "
                                    "method's default is in its help)"), method_flags(), both=True)
    p.set_defaults(run=run_train)


TRAIN_ONLY = {"out", "config", "resume", "overwrite", "stop_after", "run", "command", "debug"}


def run_train(args: argparse.Namespace) -> int:
    from erat import distributed
    from erat.config import resolve_train
    from erat.train import train

    cfg = resolve_train(args.out, resume=getattr(args, "resume", False),
                        config_file=getattr(args, "config", None),
                        flags={k: v for k, v in vars(args).items() if k not in TRAIN_ONLY})
    try:  # train() says what it wrote (nothing, for a finished run resumed)
        train(cfg, args.out, resume=getattr(args, "resume", False),
              overwrite=getattr(args, "overwrite", False),
              stop_after=getattr(args, "stop_after", None))
    except BaseException:  # no barrier: the other ranks may never reach it
        if (args.out / "config.yaml").is_file():  # (a run that failed before it holds none)
            args.hint = f"continue with: erat train --out {args.out} --resume"
        distributed.close(wait_for_all=False)
        raise
    distributed.close()  # a torchrun process group is left by train() for the caller
    return 0


# ---------------------------------------------------------------------------- eval, energy
def _add_run_data_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    from erat.external import ExternalOptions
    p.add_argument("run_dir", type=path, nargs="?", help="run folder (or a model.pt file)")
    add_options(p.add_argument_group("a model from outside erat, instead of a run folder "
                                     "(docs/own-model-and-data.md)"), ExternalOptions)
    p.set_defaults(external=ExternalOptions)  # run_eval, run_energy: _options(args.external)
    p.add_argument("--n", type=int, help="evaluate the first N test examples (default: all)")
    p.add_argument("--data-dir", help="dataset folder (default: the one the run used); for "
                   "a run on your own data, where its folder or .npz file is now")
    p.add_argument("--batch-size", type=int, default=batch_size, help="examples per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--norm", choices=["l2", "linf"], help="the threat's norm (default: the "
                   "run's training norm; l2 for a model from outside erat)")
    p.add_argument("--json", type=path, help="write the result as JSON here (checked first)")


def _add_eval(p: argparse.ArgumentParser) -> None:
    from erat.attacks import attack_choices, attack_defaults, attack_flags
    from erat.stages import EvalConfig

    cfg = EvalConfig()
    _add_run_data_args(p, cfg.batch_size)
    p.add_argument("--attack", default="pgd", help=f"attacks in order, comma-separated, each "
                   f"on the survivors of the ones before: {attack_choices()}")
    p.add_argument("--eps", type=radii, help=f"radii, e.g. 0.5,1.0 (default: "
                   f"{','.join(map(str, cfg.eps))} in l2; the run's training radius in l-inf)")
    group = p.add_argument_group("attack options")
    add_flags(group, attack_flags(), attack_defaults())
    p.add_argument("--no-checks", dest="checks", action="store_false", help="skip the sanity "
                   "checks that cost attack work")
    p.add_argument("--fresh", action="store_true", help="ignore the saved per-example "
                   "progress of an earlier, interrupted eval (kept as .eval-*.state.pt in "
                   "the run folder, or a cache folder when it is read-only)")
    p.add_argument("--fast", choices=["auto", "off"], default="auto", help="auto: the model "
                   "as CUDA graphs on a GPU (padded batches); off: eager everywhere")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from erat.assess import default_threat, evaluate_run, format_result
    from erat.attacks import attack_flags
    from erat.evaluate import EvalConfig

    options = {k: getattr(args, k) for k in attack_flags() if getattr(args, k) is not None}
    if args.run_dir and args.run_dir.is_dir() and not args.fresh:  # (its state is kept there)
        args.hint = "the same command continues the evaluation"
    norm, eps = default_threat(args.run_dir, args.norm, args.eps)
    cfg = EvalConfig.build(args.attack, norm=norm, eps=eps, batch_size=args.batch_size,
                           seed=args.seed, checks=args.checks, strict=True, **options)
    result = evaluate_run(args.run_dir, cfg, n=args.n, data_dir=args.data_dir,
                          device=args.device, fresh=args.fresh, json_path=args.json,
                          external=_options(args.external, args), fast=args.fast == "auto")
    wrote = _write_json(result, args.json)
    print("\n".join([format_result(result), *wrote]))
    return CHECKS_FAILED if result.get("checks_failed") else 0


def _write_json(result: dict[str, Any], path: Path | None) -> list[str]:
    """Write ``result`` to ``path`` (if given) before anything is printed, so that a reader
    that leaves early (``| head``: a broken pipe) does not cost the file; the lines to print
    after the result."""
    if path is None:
        return []
    from erat.files import atomic_write_json

    atomic_write_json(result, path)
    return [f"wrote {path}"]


def _add_energy(p: argparse.ArgumentParser) -> None:
    from erat.measure import STRONG, STRONG_HELP
    _add_run_data_args(p, 128)
    p.add_argument("--eps", type=number, help="radius of the neighbourhood (default: the "
                   "run's training radius, when --norm is its training norm)")
    for k in STRONG:
        p.add_argument(f"--{k}", type=int, default=STRONG[k], help=STRONG_HELP[k])
    p.set_defaults(run=run_energy)


def run_energy(args: argparse.Namespace) -> int:
    from erat.assess import energy_run, format_report

    result = energy_run(args.run_dir, eps=args.eps, T=args.T, M=args.M, S=args.S, n=args.n,
                        data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed,
                        device=args.device, json_path=args.json, norm=args.norm,
                        external=_options(args.external, args))
    wrote = _write_json(result, args.json)
    print("\n".join([format_report(result), *wrote]))
    return 0


# ---------------------------------------------------------------------------- report, reproduce
def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=path, help="run folders holding eval.json")
    p.add_argument("--out", type=path, required=True, help="folder for the tables and plots")
    p.add_argument("--eval-name", default="eval.json", help="evaluation JSON in each run")
    p.add_argument("--landscape-eps", type=number, help="also draw the loss landscape here")
    p.add_argument("--index", type=int, help="test image of the landscape (default: 0)")
    p.add_argument("--skip-unevaluated", action="store_true", help="leave out runs without one")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from erat.report import report_runs

    report_runs(args.runs, args.out, eval_name=args.eval_name,
                landscape_eps=args.landscape_eps, index=args.index,
                skip_unevaluated=args.skip_unevaluated)
    return 0


def _add_reproduce(p: argparse.ArgumentParser) -> None:
    from erat.suites import suite_names

    p.add_argument("suite", help=f"{', '.join(suite_names())}, or a YAML file")
    p.add_argument("--out", type=path, help="report folder (default: runs/<suite or file name>)")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.add_argument("--device", help="auto, cpu, cuda, ... (default: the suite's)")
    p.add_argument("--only", help="comma-separated run names to train and evaluate (the "
                   "report covers every finished run of the suite)")
    p.add_argument("--report-only", action="store_true", help="report finished runs, train nothing")
    p.set_defaults(run=run_reproduce, hint="the same command continues the suite")


def run_reproduce(args: argparse.Namespace) -> int:
    from erat.reproduce import failed_checks, reproduce

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("device", args.device)) if v}
    out = args.out or Path("runs") / Path(args.suite).stem
    only = None if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    if only == []:  # (--only "$RUNS" with RUNS empty: not the whole suite)
        raise UserError("--only names no run; leave it out to run the whole suite")
    rows = reproduce(args.suite, out, overrides=overrides, only=only,
                     report_only=args.report_only)
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'}")
    failed = failed_checks(rows, only)
    if failed:
        print(failed)
    return CHECKS_FAILED if failed else 0


# ---------------------------------------------------------------------------- bench
def _add_bench(p: argparse.ArgumentParser) -> None:
    from erat.bench import BenchOptions

    add_options(p, BenchOptions)
    p.add_argument("--json", type=path, help="write the figures as JSON here")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from erat.bench import BenchOptions
    from erat.bench import run_bench as bench
    from erat.distributed import resolve_device
    from erat.rundir import check_output_file

    if args.json:
        check_output_file(args.json, "--json")

    def partial(so_far: dict[str, Any]) -> None:  # after each row; an interrupt names it
        _write_json(so_far, args.json)
        args.hint = f"--json {args.json} holds the rows measured so far (\"complete\": false)"

    options = _options(BenchOptions, args)
    result = bench(options, device=resolve_device(options.device),
                   partial=partial if args.json else None)
    for line in _write_json(result, args.json):
        print(line)
    return 0
