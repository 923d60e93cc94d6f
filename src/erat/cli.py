"""The ``erat`` command line: ``train``, ``eval``, ``energy``, ``report``, ``reproduce``,
``bench``. It parses and dispatches; the work is done by the modules it calls.

Errors a user can cause are one line on stderr, exit code 2; problems of the environment
(no GPU, disk full, read-only folder) exit code 1; ``--debug`` or ``ERAT_DEBUG=1`` shows
the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erat.errors import EnvironmentProblem, UserError, os_problem
from erat.fields import json_object, radii


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("ERAT_DEBUG", "") not in ("", "0")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("erat: interrupted", file=sys.stderr)
        return 130
    except (UserError, EnvironmentProblem, OSError) as e:
        if debug:
            raise
        if isinstance(e, OSError):
            e = os_problem(e, f"use {e.filename}" if e.filename else "go on")
        print(f"erat: error: {first_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, EnvironmentProblem) else 2


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    from erat import __version__

    parser = argparse.ArgumentParser(prog="erat", description="erat: energy-regularised "
                                     "adversarial training and robustness evaluation")
    parser.add_argument("--version", action="version", version=f"erat {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_energy, _add_report, _add_reproduce, _add_bench):
        add(sub)
    for p in sub.choices.values():  # also after the command: erat train ... --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_specs(group, specs: dict, defaults: dict | None = None) -> None:
    """Flags from :class:`erat.fields.FlagSpec` entries (switches for booleans)."""
    for name, spec in specs.items():
        spec = spec._replace(help=spec.help.replace("%", "%%"))  # argparse formats help
        default = (defaults or {}).get(name)
        shown = spec.help if default in (None, {}) else f"{spec.help} (default: {default})"
        if spec.kind is bool:
            group.add_argument(_flag(name), dest=name, action="store_true", help=spec.help)
        elif spec.kind is dict:
            group.add_argument(_flag(name), dest=name, type=json_object, help=shown)
        else:
            group.add_argument(_flag(name), dest=name, type=spec.kind, choices=spec.choices,
                               help=shown)


# ---------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    from erat.config import REGISTERED, TrainConfig
    from erat.fields import flag_specs
    from erat.fit import FitOptions
    from erat.methods import method_flags

    p = sub.add_parser("train", help="train a classifier with a robust-training method",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--stop-after", type=int, help="stop after this epoch (resume later)")
    defaults = TrainConfig().to_dict()
    found = flag_specs({"train": TrainConfig, "fit": FitOptions})
    specs = {k: found[k]._replace(help=found[k].help.rsplit(" [", 1)[0])
             for k in defaults if k in found}
    for name, names in REGISTERED.items():  # the registries are the one list of names
        specs[name] = specs[name]._replace(help=f"{specs[name].help}: {', '.join(names())}")
    for name in ("augment", "progress"):  # on by default: offered as --no-...
        p.add_argument(f"--no-{name}", dest=name, action="store_false",
                       help=f"off: {specs.pop(name).help}")
    _add_specs(p, specs, defaults)
    _add_specs(p.add_argument_group("method hyper-parameters (METHOD.md section 4)"),
               method_flags())
    p.set_defaults(run=run_train)


TRAIN_ONLY = {"out", "config", "resume", "overwrite", "stop_after", "run", "command", "debug"}


def run_train(args: argparse.Namespace) -> int:
    from erat import distributed
    from erat.config import resolve_train
    from erat.train import train

    cfg = resolve_train(args.out, resume=getattr(args, "resume", False),
                        config_file=getattr(args, "config", None),
                        flags={k: v for k, v in vars(args).items() if k not in TRAIN_ONLY})
    try:
        path = train(cfg, args.out, resume=getattr(args, "resume", False),
                     overwrite=getattr(args, "overwrite", False),
                     stop_after=getattr(args, "stop_after", None))
    except BaseException:  # no barrier: the other ranks may never reach it
        distributed.close(wait_for_all=False)
        raise
    distributed.close()  # a torchrun process group is left by train() for the caller
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------- eval, energy
def _add_run_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="run folder (or a model.pt file)")
    p.add_argument("--n", type=int, help="evaluate the first N test examples (a subset)")
    p.add_argument("--data-dir", help="dataset folder (default: the one the run used)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="write the result as JSON here")


def _add_eval(sub) -> None:
    from erat.attacks import attack_flags, attack_names

    p = sub.add_parser("eval", help="clean and robust accuracy of a trained run",
                       formatter_class=_Help)
    _add_run_data_args(p)
    p.add_argument("--attack", default="pgd", help=f"attacks in order, comma-separated: "
                   f"{', '.join(attack_names())}")
    p.add_argument("--norm", default="l2", choices=["l2", "linf"])
    p.add_argument("--eps", type=radii, default=[0.5, 1.0], help="radii, e.g. 0.5,1.0")
    _add_specs(p.add_argument_group("attack options"), attack_flags())
    p.add_argument("--no-checks", dest="checks", action="store_false", help="skip the sanity "
                   "checks that cost attack work")
    p.add_argument("--fresh", action="store_true", help="ignore the saved per-example "
                   "progress of an earlier, interrupted eval")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from erat.assess import evaluate_run, format_result
    from erat.attacks import attack_flags
    from erat.evaluate import EvalConfig

    options = {k: getattr(args, k) for k in attack_flags() if getattr(args, k) is not None}
    cfg = EvalConfig.build(args.attack, norm=args.norm, eps=args.eps, batch_size=args.batch_size,
                           seed=args.seed, checks=args.checks, **options)
    result = evaluate_run(args.run_dir, cfg, n=args.n, data_dir=args.data_dir,
                          device=args.device, fresh=args.fresh, json_path=args.json)
    print(format_result(result))
    _write_json(result, args.json)
    return 0


def _write_json(result: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        from erat.files import atomic_write_json

        atomic_write_json(result, path)
        print(f"wrote {path}")


def _add_energy(sub) -> None:
    p = sub.add_parser("energy", help="estimate the energy (loss variation in the ball) on "
                       "test data", formatter_class=_Help)
    _add_run_data_args(p)
    p.add_argument("--eps", type=float, required=True, help="radius of the neighbourhood")
    p.add_argument("--norm", default="l2", choices=["l2", "linf"], help="the ball's norm")
    p.add_argument("--T", type=int, default=16, help="ray segments")
    p.add_argument("--M", type=int, default=16, help="directions (1 searched + M-1 random)")
    p.add_argument("--S", type=int, default=20, help="PGD steps searching the first direction")
    p.set_defaults(run=run_energy)


def run_energy(args: argparse.Namespace) -> int:
    from erat.assess import energy_run, format_report

    result = energy_run(args.run_dir, eps=args.eps, T=args.T, M=args.M, S=args.S, n=args.n,
                        data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed,
                        device=args.device, json_path=args.json, norm=args.norm)
    print(format_report(result))
    _write_json(result, args.json)
    return 0


# ---------------------------------------------------------------------------- report, reproduce
def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables and plots from evaluated run folders",
                       formatter_class=_Help)
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding eval.json")
    p.add_argument("--out", type=Path, required=True, help="folder for the tables and plots")
    p.add_argument("--eval-name", default="eval.json", help="evaluation JSON inside each run")
    p.add_argument("--landscape-eps", type=float, help="also draw the loss landscape here")
    p.add_argument("--index", type=int, default=0, help="test image of the landscape")
    p.set_defaults(run=lambda a: _report(a))


def _report(args: argparse.Namespace) -> int:
    from erat.report import report_runs

    report_runs(args.runs, args.out, eval_name=args.eval_name,
                landscape_eps=args.landscape_eps, index=args.index)
    print(f"wrote {args.out}")
    return 0


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a named suite of experiments (resumable)",
                       formatter_class=_Help)
    p.add_argument("suite", help="digits, mnist-subset, fashion-mnist, mnist, cifar10, svhn, "
                   "or a YAML file")
    p.add_argument("--out", type=Path, help="report folder (default: runs/SUITE)")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.add_argument("--device", help="auto, cpu, cuda, ...")
    p.add_argument("--only", help="comma-separated run names of the suite")
    p.add_argument("--report-only", action="store_true", help="report what is finished only")
    p.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from erat.reproduce import reproduce

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("device", args.device)) if v}
    out = args.out or Path("runs") / Path(args.suite).stem
    reproduce(args.suite, out, overrides=overrides,
              only=args.only.split(",") if args.only else None, report_only=args.report_only)
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'}")
    return 0


# ---------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="ms per training step of each method, attack throughput",
                       formatter_class=_Help)
    p.add_argument("--models", default="cnn:1x28x28,conv-large:3x32x32,preact-resnet18:3x32x32",
                   help="MODEL:CxHxW list")
    p.add_argument("--methods", default="erm,at,vat,pgd,trades,er")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (at most)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time budget per method")
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--no-attacks", dest="attacks", action="store_false")
    p.add_argument("--autoattack-n", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from erat.bench import run_bench as bench
    from erat.distributed import resolve_device
    from erat.files import check_writable_file

    if args.json:
        check_writable_file(args.json, "--json")
    result = bench(args.models, args.methods, batch_size=args.batch_size, steps=args.steps,
                   warmup=args.warmup, max_seconds=args.max_seconds, attacks=args.attacks,
                   attack_steps=args.attack_steps, autoattack_n=args.autoattack_n,
                   device=resolve_device(args.device))
    _write_json(result, args.json)
    return 0
