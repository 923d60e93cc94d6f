"""The ``erat`` command line: ``train``, ``eval``, ``energy`` (and more as they land).

The only module that reads argparse or YAML. Precedence for ``train``: the defaults of
:class:`~erat.train.TrainConfig` < the saved ``config.yaml`` of a run being resumed <
``--config FILE.yaml`` < flags given on the command line. Every user error (unknown names,
negative radii, missing files) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# Method hyper-parameter flags, named as in METHOD.md; each maps to the field of the same name.
METHOD_FLAGS: dict[str, tuple[type, str]] = {
    "eps": (float, "training radius in pixel space (every method that has one)"),
    "norm": (str, "threat norm: l2 or linf"),
    "alpha": (float, "weight of AT's / VAT's adversarial term"),
    "xi": (float, "VAT finite-difference step"),
    "power_iters": (int, "VAT power iterations K"),
    "beta": (float, "TRADES weight of the KL term"),
    "steps": (int, "PGD / TRADES inner steps"),
    "step_size": (float, "PGD / TRADES / ER search step size (default 2.5*eps/steps, ER: /S)"),
    "lam": (float, "ER weight of the labeled energy"),
    "lam_u": (float, "ER weight of the unlabeled (virtual) energy"),
    "T": (int, "ER ray segments"),
    "M": (int, "ER directions"),
    "S": (int, "ER PGD steps for the first direction (0 = FGM)"),
    "reduce": (str, "ER reduction over directions: max or mean"),
    "warmup_steps": (int, "ER: first training steps searched with S=0, then S steps"),
    "entmin": (bool, "add entropy minimisation on unlabeled predictions"),
}


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FloatingPointError, yaml.YAMLError) as e:
        print(f"erat: error: {first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("erat: interrupted", file=sys.stderr)
        return 130


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"erat {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_energy(sub)
    _add_report(sub)
    _add_reproduce(sub)
    _add_bench(sub)
    return parser


def _version() -> str:
    from erat import __version__

    return __version__


# ---------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier with a robust-training method",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-after", type=int, help="stop after this epoch (resume later)")
    p.add_argument("--dataset", help="digits, mnist, fashion-mnist, cifar10, svhn")
    p.add_argument("--data-dir", help="folder holding the official dataset files")
    p.add_argument("--download", action="store_true", help="download through torchvision")
    p.add_argument("--model", help="mlp, cnn, conv-large, preact-resnet18, wrn-28-10")
    p.add_argument(
        "--model-kwargs", type=_json_object, help="model options, e.g. '{\"width\": 16}'"
    )
    p.add_argument("--method", help="erm, at, vat, pgd, trades, er")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--labels", type=int, help="semi-supervised: keep N balanced labels")
    p.add_argument("--unlabeled-batch-size", type=int)
    p.add_argument("--epoch-steps", type=int, help="optimiser steps per epoch")
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["cosine", "step", "none"])
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sync-bn", action="store_true", help="multi-GPU: SyncBatchNorm")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    g = p.add_argument_group("method hyper-parameters (METHOD.md section 4)")
    for name, (kind, help_text) in METHOD_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            g.add_argument(flag, dest=name, action="store_true", help=help_text)
        else:
            g.add_argument(flag, dest=name, type=kind, help=help_text)
    p.set_defaults(run=run_train)


def resolve_train_config(args: argparse.Namespace) -> dict[str, Any]:
    """Merge defaults, a resumed run's config, ``--config`` and flags into one dict."""
    from erat.train import CONFIG, TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged: dict[str, Any] = {}
    saved = args.out / CONFIG
    if getattr(args, "resume", False) and saved.exists():
        merged.update(yaml.safe_load(saved.read_text()) or {})
    if getattr(args, "config", None):
        merged = _merge(merged, _read_yaml(args.config), fields)
    flags = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "config", "resume", "stop_after", "run", "command")
    }
    return _merge(merged, flags, fields)


def _merge(base: dict[str, Any], new: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """Overlay ``new`` on ``base``; keys that are not config fields are method parameters."""
    out = dict(base)
    params = dict(out.get("method_params") or {})
    if "method" in new and new["method"] != out.get("method"):
        params = {}  # another method: the old one's parameters do not carry over
    for key, value in new.items():
        if key == "method_params":
            params.update(value or {})
        elif key in fields:
            out[key] = value
        elif key in METHOD_FLAGS:
            params[key] = value
        else:
            raise UserError(f"unknown setting {key!r}")
    out["method_params"] = params
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no such config file: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings")
    return data


def run_train(args: argparse.Namespace) -> int:
    from erat import distributed
    from erat.methods import method_params
    from erat.train import TrainConfig, train

    merged = resolve_train_config(args)
    cfg = TrainConfig.from_dict(merged)
    accepted = method_params(cfg.method)
    extra = sorted(set(cfg.method_params) - set(accepted))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise UserError(
            f"method {cfg.method!r} takes no {flags}; it takes: "
            + (", ".join(sorted(accepted)) or "nothing")
        )
    try:
        path = train(
            cfg,
            args.out,
            resume=getattr(args, "resume", False),
            stop_after=getattr(args, "stop_after", None),
        )
    except BaseException:  # no barrier: the other ranks may never reach it
        distributed.close(wait_for_all=False)
        raise
    distributed.close()  # a torchrun process group is left by train() for the caller to close
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"want a JSON object, got {text!r}")
    return value


# ---------------------------------------------------------------------------- eval
def _parse_radii(text: str) -> list[float]:
    try:
        radii = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"radii must be numbers separated by commas: {text!r}"
        ) from e
    if not radii or any(not (r >= 0 and r < float("inf")) for r in radii):
        raise argparse.ArgumentTypeError(f"radii must be finite numbers >= 0: {text!r}")
    return radii


def _add_run_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="run folder (or a model.pt file)")
    p.add_argument("--n", type=int, help="evaluate the first N test examples (a subset)")
    p.add_argument("--data-dir", help="dataset folder (default: the one the run used)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="write the result as JSON here")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="clean and robust accuracy of a trained run")
    _add_run_data_args(p)
    p.add_argument("--attack", default="pgd", help="pgd, autoattack, square or all")
    p.add_argument("--norm", default="l2", choices=["l2", "linf"])
    p.add_argument("--eps", type=_parse_radii, default=[0.5, 1.0], help="radii, e.g. 0.5,1.0")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--step-size", type=float)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument(
        "--no-checks", dest="checks", action="store_false", help="skip the sanity checks"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore saved per-example progress of an earlier, interrupted eval",
    )
    p.set_defaults(run=run_eval)


def load_run(args: argparse.Namespace):
    """The model (eval mode), its metadata and the test data of a run folder."""
    from erat.checkpoint import load_meta, load_model, model_path, sha256
    from erat.data import load_dataset
    from erat.train import CONFIG, resolve_device

    path = model_path(args.run_dir)
    if not path.exists():
        raise UserError(f"{args.run_dir}: no model.pt (is the run finished?)")
    device = resolve_device(args.device)
    meta = load_meta(path)
    data_dir = args.data_dir
    config = path.parent / CONFIG
    if data_dir is None and config.exists():
        data_dir = (yaml.safe_load(config.read_text()) or {}).get("data_dir")
    x, y = load_dataset(meta["dataset"], "test", data_dir).tensors
    n_total = len(x)
    if args.n is not None:
        if args.n < 1:
            raise UserError("--n must be >= 1")
        x, y = x[: args.n], y[: args.n]
    model = load_model(path, device)
    return model, meta, x, y, n_total, sha256(path)


def run_eval(args: argparse.Namespace) -> int:
    from erat.evaluate import evaluate

    model, meta, x, y, n_total, digest = load_run(args)
    state = (
        None
        if args.run_dir.is_file()
        else (args.run_dir / f".eval-{args.attack}-{args.norm}.state.pt")
    )
    if state is not None and args.fresh:
        state.unlink(missing_ok=True)
    result = evaluate(
        model,
        x,
        y,
        attack=args.attack,
        norm=args.norm,
        eps=args.eps,
        steps=args.steps,
        step_size=args.step_size,
        restarts=args.restarts,
        batch_size=args.batch_size,
        seed=args.seed,
        n_total=n_total,
        progress=True,
        state_path=state,
        checks=args.checks,
        extra_info={
            "checkpoint_sha256": digest,
            "run": str(args.run_dir),
            "dataset": meta["dataset"],
            "method": meta["method"],
        },
    )
    print(format_eval(result))
    _write_json(result, args.json)
    return 0


def format_eval(result: dict[str, Any]) -> str:
    threat = result["threat"]
    lines = [
        f"examples: {threat['n']}"
        + (f" ({threat['subset_note']})" if threat.get("subset") else ""),
        f"{'clean':<24} {result['clean_acc']:.4f}",
    ]
    lines += [f"{key:<24} {acc:.4f}" for key, acc in result["robust_acc"].items()]
    failed = result.get("checks_failed", 0)
    lines.append(f"sanity checks failed: {failed}")
    lines += [
        f"  ! {c['name']}: {c['detail']}" for c in result.get("checks", []) if not c["passed"]
    ]
    return "\n".join(lines)


def _write_json(result: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        from erat.checkpoint import atomic_write_json

        atomic_write_json(result, path)
        print(f"wrote {path}")


# ---------------------------------------------------------------------------- energy
def _add_energy(sub) -> None:
    p = sub.add_parser(
        "energy", help="estimate the energy (loss variation in the ball) on test data"
    )
    _add_run_data_args(p)
    p.add_argument("--eps", type=float, required=True, help="l2 radius of the neighbourhood")
    p.add_argument("--T", type=int, default=16, help="ray segments")
    p.add_argument("--M", type=int, default=16, help="directions (1 searched + M-1 random)")
    p.add_argument("--S", type=int, default=20, help="PGD steps searching the first direction")
    p.set_defaults(run=run_energy)


def run_energy(args: argparse.Namespace) -> int:
    from erat.energy import energy_report

    if not args.eps >= 0 or args.eps == float("inf"):
        raise UserError(f"--eps must be a finite number >= 0, got {args.eps}")
    model, meta, x, y, n_total, digest = load_run(args)
    result = energy_report(
        model,
        x,
        y,
        eps=args.eps,
        T=args.T,
        M=args.M,
        S=args.S,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result["settings"].update(
        {"n_total": n_total, "checkpoint_sha256": digest, "dataset": meta["dataset"]}
    )
    for key in (
        "energy_mean",
        "energy_median",
        "at_term_mean",
        "vat_term_mean",
        "certified_frac",
        "virtual_energy_mean",
    ):
        if key in result:
            print(f"{key:<22} {result[key]:.4f}")
    print(result.get("certificate_note", ""))
    _write_json(result, args.json)
    return 0


# ---------------------------------------------------------------------------- report
def _add_report(sub) -> None:
    p = sub.add_parser("report", help="tables and plots from evaluated run folders")
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding eval.json")
    p.add_argument("--out", type=Path, required=True, help="folder for the tables and plots")
    p.add_argument("--eval-name", default="eval.json", help="evaluation JSON inside each run")
    p.add_argument(
        "--landscape-eps", type=float, help="also draw the loss landscape at this radius"
    )
    p.add_argument("--index", type=int, default=0, help="test image of the landscape")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from erat import report
    from erat.checkpoint import load_meta, load_model
    from erat.data import load_dataset

    results, rows = {}, []
    for run in args.runs:
        path = run / args.eval_name
        if not path.is_file():
            raise UserError(f"{path} not found: run `erat eval {run} --json {path}` first")
        res = json.loads(path.read_text())
        results[run.name] = res
        rows.append(
            {
                "run": run.name,
                "clean_acc": res["clean_acc"],
                **res["robust_acc"],
                "checks_failed": res.get("checks_failed", 0),
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    report.write_csv(rows, args.out / "results.csv")
    (args.out / "results.md").write_text(report.results_table(rows, columns) + "\n")
    norm = next(iter(results.values()))["threat"]["norm"]
    attack = next(iter(results.values()))["threat"]["attack"]
    report.accuracy_vs_radius(results, args.out / "accuracy_vs_radius", attack=attack, norm=norm)
    if args.landscape_eps is not None:
        meta = load_meta(args.runs[0] / "model.pt")
        x, y = load_dataset(meta["dataset"], "test", _run_data_dir(args.runs[0])).tensors
        i = args.index
        report.landscape(
            {r.name: load_model(r) for r in args.runs},
            x[i : i + 1],
            y[i : i + 1],
            eps=args.landscape_eps,
            out=args.out / "landscape",
        )
    print(report.results_table(rows, columns))
    print(f"wrote {args.out}")
    return 0


def _run_data_dir(run: Path) -> str | None:
    from erat.train import CONFIG

    config = run / CONFIG
    return (yaml.safe_load(config.read_text()) or {}).get("data_dir") if config.exists() else None


# ---------------------------------------------------------------------------- reproduce
def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a named suite of the paper's experiments")
    p.add_argument("suite", help="digits, mnist-subset, mnist, cifar10, svhn, or a YAML file")
    p.add_argument("--out", type=Path, help="report folder (default: runs/SUITE)")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.add_argument("--device", help="auto, cpu, cuda, ...")
    p.add_argument("--only", help="comma-separated run names of the suite")
    p.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from erat.reproduce import reproduce

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("device", args.device)) if v}
    out = args.out or Path("runs") / Path(args.suite).stem
    only = args.only.split(",") if args.only else None
    reproduce(args.suite, out, overrides=overrides, only=only)
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'}")
    return 0


# ---------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="ms per training step of each method, attack throughput")
    p.add_argument(
        "--models",
        default="cnn:1x28x28,conv-large:3x32x32,preact-resnet18:3x32x32",
        help="MODEL:CxHxW list",
    )
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


def _parse_setups(text: str) -> list[tuple[str, tuple[int, int, int]]]:
    setups = []
    for item in text.split(","):
        name, _, shape = item.partition(":")
        try:
            c, h, w = (int(v) for v in shape.lower().split("x"))
        except ValueError as e:
            raise UserError(f"--models wants MODEL:CxHxW items, got {item!r}") from e
        setups.append((name, (c, h, w)))
    return setups


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from erat.bench import bench_attacks, bench_training
    from erat.methods import method_names
    from erat.models import build_model
    from erat.train import resolve_device

    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        raise UserError("bench needs --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    device = resolve_device(args.device)
    methods = args.methods.split(",")
    unknown = set(methods) - set(method_names())
    if unknown:
        raise UserError(f"unknown method(s) {sorted(unknown)}; choose from {method_names()}")
    result: dict[str, Any] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "models": {},
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}")
    print(f"{'model':<16} {'method':<8} {'ms/step':>9} {'x erm':>7} {'peak MB':>9}")
    for name, shape in _parse_setups(args.models):
        rows = bench_training(
            name,
            shape,
            methods,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            max_seconds=args.max_seconds,
            device=device,
        )
        entry: dict[str, Any] = {"shape": list(shape), "methods": {r["method"]: r for r in rows}}
        for r in rows:
            print(
                f"{name:<16} {r['method']:<8} {r['ms_per_step']:>9.1f} "
                f"{r['ratio_to_erm']:>7.2f} {r['peak_mem_mb']:>9.0f}"
            )
        if args.attacks:
            model = build_model(
                name, in_shape=shape, num_classes=10, mean=[0.5] * shape[0], std=[0.25] * shape[0]
            )
            entry["attacks"] = bench_attacks(
                model,
                shape,
                batch_size=args.batch_size,
                steps=args.attack_steps,
                repeats=min(5, args.steps),
                device=device,
                autoattack_n=args.autoattack_n,
                max_seconds=args.max_seconds,
            )
            print(f"{name:<16} attacks: " + json.dumps(entry["attacks"]))
        result["models"][name] = entry
    _write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
