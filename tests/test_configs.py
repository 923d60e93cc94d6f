"""Every shipped suite and protocol config resolves to valid settings (nothing is trained):
a typo in a key, a method parameter, a model name or an evaluation setting fails here."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from erat.cli import TRAIN_ONLY, build_parser
from erat.config import TrainConfig, resolve_train
from erat.datasets import dataset_info, dataset_names
from erat.evaluate import EvalConfig
from erat.measure import energy_report
from erat.methods import build_method
from erat.models import model_names, model_params
from erat.suites import load_suite, run_config, suite_dir, suite_names

PAPER_SUITES = {"mnist": 100, "cifar10": 4000, "svhn": 1000}  # suite: labels (METHOD.md 4)
SUPERVISED = {"erm", "at", "vat", "pgd", "trades", "er"}
PROTOCOLS = sorted((suite_dir() / "protocols").glob("*.yaml"))
EXPERIMENT_SUITES = sorted(
    str(p) for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))
PLOT_KEYS = {"landscape", "landscape_eps", "landscape_index"}


def _kwargs(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _check_train_config(cfg: TrainConfig, where: str) -> None:
    assert cfg.dataset in dataset_names(), where
    assert cfg.model in model_names(), where
    unknown = set(cfg.model_kwargs) - set(model_params(cfg.model))
    assert not unknown, f"{where}: model {cfg.model} takes no {unknown}"
    method = build_method(cfg.method, **cfg.method_params)  # unknown parameters raise
    if cfg.labels is not None:
        assert cfg.labels % dataset_info(cfg.dataset).num_classes == 0, where  # balanced
        if cfg.method in ("vat", "er") and cfg.method_params.get("lam_u") != 0:  # (0: on purpose)
            assert method.uses_unlabeled, f"{where}: a semi-supervised run must read x_u"


def test_the_suites_are_found():
    assert set(PAPER_SUITES) | {"digits", "mnist-subset"} <= set(suite_names())


@pytest.mark.parametrize("name", suite_names() + EXPERIMENT_SUITES)
def test_suite_resolves(name):
    suite = load_suite(name)
    names = [run["name"] for run in suite["runs"]]
    assert len(names) == len(set(names)), f"{name}: duplicate run names"
    for run in suite["runs"]:
        assert isinstance(run["name"], str)
        assert run["name"].replace("-", "").replace(".", "").isalnum()
        _check_train_config(run_config(suite, run, {}), f"{name}/{run['name']}")
    ev = dict(suite.get("eval", {}))
    assert ev.pop("n", 1) >= 1
    if ev.get("eps") == "train":  # each run's own training radius
        ev["eps"] = [0.1]
    EvalConfig.build(**ev)  # unknown keys, attacks or options raise
    en = dict(suite.get("energy") or {})
    assert en.pop("n", 1) >= 1
    assert set(en) <= _kwargs(energy_report) - {"model", "x", "y"}, f"{name}: energy keys"
    assert set(suite.get("plots", {})) <= PLOT_KEYS


@pytest.mark.parametrize(("name", "labels"), PAPER_SUITES.items())
def test_paper_suite_covers_the_protocol(name, labels):
    suite = load_suite(name)
    cfgs = {run["name"]: run_config(suite, run, {}) for run in suite["runs"]}
    supervised = {c.method for c in cfgs.values() if c.labels is None}
    assert supervised == SUPERVISED
    semi = {n: c for n, c in cfgs.items() if c.labels is not None}
    assert all(c.labels == labels for c in semi.values())
    kinds = {(c.method, bool(c.method_params.get("entmin"))) for c in semi.values()}
    assert kinds == {("erm", False), ("vat", False), ("vat", True), ("er", False), ("er", True)}
    for n, c in semi.items():
        assert n.endswith(f"-{labels}"), n
        assert c.fit.unlabeled_batch_size and c.fit.epoch_updates, n  # VAT's fixed updates
    # every semi-supervised run shares the optimiser, model and length of its baseline
    shared = {
        (c.model, c.fit.optimizer, c.fit.lr, c.fit.batch_size, c.fit.unlabeled_batch_size,
         c.fit.epoch_updates,
         c.fit.epochs)
        for c in semi.values()
    }
    assert len(shared) == 1


@pytest.mark.parametrize("path", PROTOCOLS, ids=[p.stem for p in PROTOCOLS])
def test_protocol_resolves_through_the_cli(tmp_path, path):
    args = build_parser().parse_args(["train", "--config", str(path), "--out", str(tmp_path)])
    cfg = resolve_train(args.out, resume=False, config_file=args.config,
                        flags={k: v for k, v in vars(args).items() if k not in TRAIN_ONLY})
    _check_train_config(cfg, path.name)


def test_there_are_protocols():
    assert {p.stem for p in PROTOCOLS} >= {"mnist-vat-100", "svhn-vat-1000", "cifar10-vat-4000"}


def test_one_resolution_path_refuses_budget_with_epochs_for_suites_too(tmp_path):
    from erat.config import resolve
    from erat.errors import UserError

    suite = tmp_path / "s.yaml"
    suite.write_text("defaults: {dataset: digits, epochs: 3, budget_epochs: 2}\n"
                     "runs:\n  - {name: a, method: erm, budget: 2}\n"
                     "  - {name: b, method: erm, budget: 2, epochs: 4}\n")
    loaded = load_suite(str(suite))
    a = run_config(loaded, loaded["runs"][0], {})  # the run's own budget replaces the default
    assert a.fit.budget == 2 and a.fit.epochs is None
    with pytest.raises(UserError, match="--budget and --epochs contradict"):
        run_config(loaded, loaded["runs"][1], {})  # one entry giving both
    # flags override the --config file: its budget gives way to --epochs, with its split
    flags = resolve([({"budget": 4, "budget_epochs": 2}, "c.yaml"), ({"epochs": 3}, "flags")])
    assert flags.fit.epochs == 3 and flags.fit.budget is None and flags.fit.budget_epochs is None
    # a budget-driven run records what drives it: no epoch count it did not use
    cfg = resolve([({"dataset": "digits", "budget": 2.0}, "flags")])
    assert cfg.fit.epochs is None and cfg.to_dict()["epochs"] is None
    assert resolve([({"dataset": "digits"}, "flags")]).fit.epochs == 10
    # a run saved before 0.3 (epochs 10 beside its budget) resumes without a conflict
    from erat.config import resume_conflicts

    saved = {**cfg.to_dict(), "epochs": 10}
    assert resume_conflicts(saved, cfg.to_dict()) == []


@pytest.mark.parametrize("layers, says", [
    ([({"val_eps": -1}, "flags")], "--val-eps must be a finite number > 0"),
    ([({"method": "er", "S": -1}, "flags")], "--S must be an integer >= 0, got -1"),
    ([({"epochs": 1.5}, "c.yaml")], "c.yaml: epochs must be an integer, got 1.5"),
    ([({"schedule": "x"}, "c.yaml")], "c.yaml: schedule must be one of cosine, step, none"),
    ([({"lr": True}, "c.yaml")], "c.yaml: lr must be a number, got True"),
    ([({"budget_epochs": 2}, "flags")], "--budget-epochs must come with a budget"),
    ([({"S": -2}, "c.yaml"), ({"method": "er"}, "flags")], "c.yaml: S must be an integer >= 0"),
    ([({"lr": 0}, "s.yaml run a"), ({"lr": 0.1}, "the command line")], None),
    ([({"lr": -1}, "s.yaml run a"), ({}, "the command line")], "s.yaml run a: lr must be"),
    ([({"method": "er"}, "s.yaml defaults"), ({"steps": 3}, "s.yaml run a")],
     "s.yaml run a: method 'er' takes no steps"),  # (blamed the defaults, which set er)
    ([({"method": "erm"}, "c.yaml"), ({"eps": 0.5}, "flags")], "method 'erm' takes no eps"),
])
def test_a_refused_setting_is_named_where_it_was_given(layers, says):
    """Range and type errors named the setting as Python spells it (val_eps), whether it came
    from a flag or a file (and not which file); now the flag, or the file or suite entry.
    A type was named as Python spells it too (``schedule must be Literal``); now in words.
    A method parameter of a --config file without a method was dropped when --method was
    given on the command line (S: -2 trained); it is kept, and checked."""
    from erat.config import resolve
    from erat.errors import UserError

    if says is None:
        assert resolve(layers).fit.lr == 0.1
        return
    with pytest.raises(UserError) as err:
        resolve(layers)
    assert str(err.value).startswith(says), str(err.value)


def test_a_method_switch_keeps_the_parameters_the_new_method_takes(capsys):
    """--method er over a --config file of trades with eps 1.0 trained at ER's default eps 2.0
    without a word (every parameter of the file's method was dropped); now the threat (eps,
    norm) carries over, and the other parameters are named as dropped."""
    from erat.config import resolve

    cfg = resolve([({"method": "trades", "eps": 1.0, "steps": 3}, "c.yaml"),
                   ({"method": "er"}, "flags")])
    assert cfg.method_params == {"eps": 1.0}
    assert "the method trades becomes er (flags); its steps dropped" in capsys.readouterr().err
    # the threat only: a step size means another thing to each method (PGD's, Fast-AT's FGSM)
    cfg = resolve([({"method": "pgd", "eps": 0.03, "norm": "linf", "step_size": 0.007},
                    "c.yaml"), ({"method": "fast-at"}, "flags")])
    assert cfg.method_params == {"eps": 0.03, "norm": "linf"}
    assert "its step_size dropped" in capsys.readouterr().err


def test_a_setting_without_effect_is_noted(tmp_path, capsys, monkeypatch):
    """--momentum under Adam, --val-eps without --val, --unlabeled-batch-size without --labels
    trained without a word; now a note names each (from a --config file too)."""
    from erat.config import resolve_train

    conf = tmp_path / "c.yaml"
    conf.write_text("val_eps: 0.5\n")
    resolve_train(tmp_path / "run", resume=False, config_file=conf,
                  flags={"optimizer": "adam", "momentum": 0.5, "unlabeled_batch_size": 8})
    err = capsys.readouterr().err
    assert "--momentum has no effect here (it is SGD's; --optimizer is adam)" in err
    assert "--val-eps has no effect here (validation needs --val N)" in err
    assert "--unlabeled-batch-size has no effect here" in err
    resolve_train(tmp_path / "run", resume=False, config_file=None,
                  flags={"optimizer": "sgd", "momentum": 0.5, "val": 50, "val_eps": 0.5})
    assert "no effect" not in capsys.readouterr().err
    resolve_train(tmp_path / "run", resume=False, config_file=None,  # (the length: its own)
                  flags={"budget": 2, "budget_epochs": 2, "epoch_updates": 3})
    assert "--epoch-updates has no effect here (--budget-epochs sets the epochs' length)" in \
        capsys.readouterr().err
    # a method's terms of the unlabeled batch without one, and the reverse
    resolve_train(tmp_path / "run", resume=False, config_file=None,
                  flags={"method": "er", "lam_u": 5.0, "balance": 0.0})
    err = capsys.readouterr().err
    assert "--lam-u has no effect here" in err and "--balance has no effect here" in err
    resolve_train(tmp_path / "run", resume=False, config_file=None,
                  flags={"method": "er", "labels": 100, "lam_kl": 1.0, "lam_u": 2.0})
    err = capsys.readouterr().err
    assert "--lam-kl has no effect here (it acts only without unlabeled inputs)" in err
    assert "--lam-u" not in err
    resolve_train(tmp_path / "run", resume=False, config_file=None,  # (no unlabeled batch
                  flags={"method": "er", "labels": 100, "lam_kl": 1.0, "lam_u": 0.0})  # read)
    assert "--lam-kl" not in capsys.readouterr().err
    resolve_train(tmp_path / "run", resume=False, config_file=None,  # (supervised ER: no
                  flags={"method": "er", "xi": 0.5, "power_iters": 3, "S": 0,  # VAT search,
                         "step_size": 0.1})  # and at S 0 no PGD step)
    err = capsys.readouterr().err
    assert "--xi has no effect here (VAT's power iteration starts the virtual term's " \
        "search: --labels N or --lam-kl above 0)" in err and "--power-iters has no" in err
    assert "--step-size has no effect here (the search takes no PGD steps at S 0)" in err
    resolve_train(tmp_path / "run", resume=False, config_file=None,  # (each in use)
                  flags={"method": "er", "xi": 0.5, "lam_kl": 1.0, "S": 2, "step_size": 0.1})
    assert "no effect" not in capsys.readouterr().err
    resolve_train(tmp_path / "run", resume=False, config_file=None,  # (labels, no unlabeled
                  flags={"method": "er", "labels": 100, "lam_u": 0.0, "step_size": 0.5,  # term:
                         "xi": 0.5})  # supervised, S 1)
    err = capsys.readouterr().err
    assert "--step-size" not in err and "search: --lam-kl above 0)" in err
    resolve_train(tmp_path / "run", resume=False, config_file=None,
                  flags={"dataset": "digits", "data_dir": "/nonexistent", "download": True})
    err = capsys.readouterr().err
    assert "--data-dir has no effect here (digits is embedded" in err and "--download" in err
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # (one process)
    conf.write_text("budget: 2\n")  # a file's budget replaced by the flags' --epochs
    resolve_train(tmp_path / "run", resume=False, config_file=conf,
                  flags={"epochs": 1, "sync_bn": True})
    err = capsys.readouterr().err
    assert f"--epochs replaces the budget of {conf}" in err and "--sync-bn has no effect" in err


SUITE = """suite: t
defaults: {dataset: digits, model: mlp, epochs: 1, progress: false}
runs:
  - {name: erm, method: erm%s}
eval: {attack: pgd, eps: [0.5], steps: 2%s}
%s
"""


@pytest.mark.parametrize("run, ev, extra, says", [
    (", method: vat", "", "", "s.yaml line 4: not valid YAML ('method' given twice in one "
                             "mapping)"),
    (", seed: 3, seeds: [0, 1]", "", "", "s.yaml run erm: seed is given both as a value and "
                                         "in seeds; give one"),
    (", seeds: [0, 0]", "", "", "s.yaml run erm: seeds [0, 0] name a seed twice"),
    (", eps: 1.0, grid: {eps: [0.5]}", "", "", "s.yaml run erm: eps is given both as a value "
                                                "and in grid"),
    (", lr: 0.1, grid: {lr: [0.1]}", "", "", "s.yaml run erm: lr is given both as a value and "
                                             "in grid"),
    ("", ", n: -1", "", "s.yaml: eval.n must be a number of test images (1 or more"),
    ("", ", n: 0", "", "s.yaml: eval.n must be a number of test images"),
    ("", ", n: '100'", "", "s.yaml: eval.n must be a number of test images"),
    (", eval: {n: 1.5}", "", "", "s.yaml run erm: eval.n must be a number of test images"),
    ("", "", "energy: {eps: 1.0, nn: 5}", "s.yaml: energy must be a mapping with eps and any "
                                          "of M, S, T"),
    ("", "", "energy: {n: 30, T: 2}", "s.yaml: energy needs eps, the radius of the energy's "
                                      "ball, got {'n': 30, 'T': 2}"),
    ("", "", "energy: {eps: 1.0, n: -3}", "s.yaml: energy: n must be a number of test images"),
    (", esp: 1.0", "", "", "s.yaml run erm: unknown setting 'esp'; did you mean 'eps'?"),
    ("", "", "defaults: {method: vatt}", "not valid YAML ('defaults' given twice"),
])
def test_suite_mistakes_are_refused_before_training(tmp_path, capsys, run, ev, extra, says):
    """Each passed silently (a key given twice: the later won, so the run named erm trained
    VAT; seed beside seeds: dropped; n -1: all but one image) or failed with a traceback
    after the first run had trained (n '100')."""
    from erat.cli import main

    (tmp_path / "s.yaml").write_text(SUITE % (run, ev, extra))
    code = main(["reproduce", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_merged_key_may_be_given_again(tmp_path):
    """YAML merges (``<<: *defaults``) bring keys a mapping may override: not a duplicate."""
    from erat.files import read_yaml

    (tmp_path / "m.yaml").write_text("base: &b {method: erm, lr: 0.1}\n"
                                     "run: {<<: *b, method: er}\n")
    assert read_yaml(tmp_path / "m.yaml")["run"] == {"method": "er", "lr": 0.1}
    path = Path(__file__).parents[1] / "src" / "erat" / "configs" / "mnist-subset.yaml"
    assert read_yaml(path)["runs"]


def test_fractions_in_files_are_numbers():
    """``eps: 8/255`` in a YAML file was refused (a number, got '8/255') though the flag takes
    it; config.yaml records the number."""
    from erat.config import resolve
    from erat.errors import UserError

    cfg = resolve([({"method": "fast-at", "eps": "8/255", "val_eps": "4/255"}, "c.yaml")])
    assert cfg.method_params["eps"] == 8 / 255 and cfg.fit.val_eps == 4 / 255
    assert cfg.to_dict()["method_params"]["eps"] == 8 / 255
    with pytest.raises(UserError, match=r"c.yaml: eps must be a number, got '8/0'"):
        resolve([({"method": "fast-at", "eps": "8/0"}, "c.yaml")])


def test_an_unknown_method_in_a_suite_names_the_run(tmp_path, capsys):
    from erat.cli import main

    (tmp_path / "s.yaml").write_text((SUITE % ("", "", "")).replace("method: erm",
                                                                     "method: vatt"))
    assert main(["reproduce", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "s.yaml run erm: unknown method 'vatt'; choose one of" in capsys.readouterr().err


def test_a_method_names_its_flags_and_wants_an_l_inf_radius_for_l_inf():
    """The l2 default radius (2.0) was taken for --norm linf and refused as 'above 1', a
    radius the user never gave; a method's parameters were listed by their Python names."""
    from erat.errors import UserError

    with pytest.raises(UserError, match=r"^--norm linf needs --eps \(an l-inf radius, e.g. "
                                        r"--eps 8/255\): pgd's default 2.0 is an l2 radius$"):
        build_method("pgd", norm="linf")
    assert build_method("pgd", norm="linf", eps=0.1).eps == 0.1
    assert build_method("fast-at", norm="linf").norm == "linf"  # (its default is l-inf)
    with pytest.raises(UserError, match=r"steps; it takes: adv_weight \(--adv-weight\), balance"):
        build_method("vat", steps=3)


def test_the_help_of_a_shared_flag_says_its_words_once():
    from erat.fields import _merged

    helps = {"step (unset: 2.5*eps/S)": [("er", "")], "step (unset: 1.25*eps)": [("fast", "")],
             "step (unset: 2.5*eps/steps)": [("pgd", ""), ("trades", "")]}
    assert _merged(helps) == "step (unset: 2.5*eps/S [er]; 1.25*eps [fast]; 2.5*eps/steps " \
        "[pgd, trades])"
    assert _merged({"a radius": [("at", "2.0")], "b radius": [("fa", "0.3")]}) == \
        "a radius [at: 2.0]; b radius [fa: 0.3]"
    assert _merged({"one (x)": [("a", "1"), ("b", "2")]}) == "one (x) [a: 1; b: 2]"
    assert _merged({"x (a) y (b)": [("o1", "")], "x (a) z (c)": [("o2", "")]}) == \
        "x (a) y (b) [o1]; x (a) z (c) [o2]"  # (the shared bracket is closed: no merge)
