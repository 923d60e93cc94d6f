"""The three commonest changes, each done in one place (here, a test file): an attack, a
method with a new hyper-parameter, and a model of one's own trained through ``fit``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import yaml
from torch import nn

from erat.attacks import ATTACKS, correct, option, register_attack
from erat.cli import main
from erat.evaluate import evaluate
from erat.fit import FitData, FitOptions, fit
from erat.losses import cross_entropy
from erat.methods import METHODS, Batch, StepOutput, build_method, param, register
from erat.threat import Threat


@pytest.fixture
def toy_attack():
    @register_attack("toy")
    @dataclass
    class Toy:
        """Moves every input by the whole radius towards the grey image."""

        pull: float = option(1.0, "fraction of the radius to move")

        def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     threat: Threat, seed: int) -> torch.Tensor:
            toward = (0.5 - x).flatten(1)
            step = toward / toward.norm(dim=1, keepdim=True).clamp_min(1e-12)
            x_adv = x + self.pull * threat.eps * step.view_as(x)
            return correct(model, threat.project(x, x_adv), y)

    yield Toy
    ATTACKS.pop("toy")


@pytest.fixture
def toy_method():
    @register("toy")
    @dataclass
    class Toy:
        """Cross-entropy scaled by ``gain`` (a hyper-parameter the CLI has never heard of)."""

        gain: float = param(1.0, "scale of the loss")
        scaled: bool = param(True, "apply the gain")
        uses_unlabeled = False

        def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
            logits = model(batch.x)
            loss = (self.gain if self.scaled else 1.0) * cross_entropy(logits, batch.y).mean()
            return StepOutput(loss, {"loss": loss.detach(),
                                     "acc": (logits.argmax(1) == batch.y).float().mean()})

    yield Toy
    METHODS.pop("toy")


def digits():
    from erat import load_dataset

    return load_dataset("digits", "train").tensors


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_an_attack_option_named_like_an_eval_flag_is_refused():
    """An option ``n`` made every ``erat eval``, ``--help`` included, an argparse traceback."""
    with pytest.raises(TypeError, match="option.s. n share a name with flags of erat eval"):
        @register_attack("clash")
        @dataclass
        class Clash:
            n: int = option(3, "how many")
    assert "clash" not in ATTACKS
    with pytest.raises(TypeError, match="setting 'steps' has two types"):
        @register_attack("clash")
        @dataclass
        class Other:
            steps: str = option("many", "PGD's is an int")
    assert "clash" not in ATTACKS


@pytest.mark.parametrize("declared, message", [
    ({"roles": {"black-box"}, "queries_option": "draws"},
     "'square' .erat.attacks.square. both claim role 'black-box'"),
    ({"presets": {"all": 0}}, "'pgd' .erat.attacks.pgd. both take rank 0 of preset 'all'"),
])
def test_an_attack_taking_anothers_role_or_rank_is_refused(declared, message):
    """A newcomer's attack with Square's role replaced it in the masking check (alphabetical
    order), or crashed every eval without ``queries_option``; one with PGD's rank in ``all``
    ran before PGD and the PGD-AutoAttack check was skipped: both without a word."""
    body = {"__annotations__": {"draws": int}, "draws": option(10, "random points"), **declared}
    with pytest.raises(TypeError, match=message):
        register_attack("clash")(dataclass(type("Noise", (), body)))
    assert "clash" not in ATTACKS


def test_a_registered_attack_runs_after_pgd(toy_attack):
    x, y = digits()
    model = linear_model().eval()
    res = evaluate(model, x[:40], y[:40], attacks=["pgd", "toy"], eps=[0.5], steps=3,
                   sanity_n=0, pull=0.5)
    assert set(res["robust_acc"]) == {"pgd-l2-eps0.5", "pgd+toy-l2-eps0.5"}
    assert res["robust_acc"]["pgd+toy-l2-eps0.5"] <= res["robust_acc"]["pgd-l2-eps0.5"]
    assert res["threat"]["attacks"] == ["pgd", "toy"]


def test_a_new_method_parameter_gets_its_flag(toy_method, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--method", "toy", "--gain", "2.5",
                 "--epochs", "1", "--epoch-updates", "2", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "toy" and cfg["method_params"] == {"gain": 2.5}
    assert build_method("toy", gain=3.0).gain == 3.0


def test_a_new_switch_on_by_default_can_be_turned_off_and_is_recorded(toy_method, tmp_path,
                                                                       capsys):
    import shlex

    from erat.cli import TRAIN_ONLY, build_parser
    from erat.config import resolve
    from erat.reproduce import command

    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--method", "toy", "--no-scaled",
                 "--epochs", "1", "--epoch-updates", "2", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method_params"] == {"scaled": False}
    cfg = resolve([(saved, "config.yaml")])
    line = command(cfg, out)
    assert "--no-scaled" in line
    args = build_parser(["train"]).parse_args(shlex.split(line)[1:])
    flags = {k: v for k, v in vars(args).items() if k not in TRAIN_ONLY}
    assert resolve([(flags, "flags")]).method_params == {"scaled": False}


def test_a_custom_module_trains_through_fit():
    x, y = digits()

    class Mine(nn.Module):  # in no registry
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
                                      nn.Linear(32, 10))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.body(z)

    torch.manual_seed(0)
    model = Mine()
    before = model.body[1].weight.detach().clone()
    result = fit(model, build_method("er", eps=0.5), FitData(x, y),
                 FitOptions(epochs=2, batch_size=64, progress=False), log=lambda *_: None)
    assert result.model is model and result.last_epoch == 2 and result.updates == 2 * 22
    assert not torch.equal(before, model.body[1].weight)
    assert result.cost == pytest.approx(2 * 3.0, rel=1e-6)  # ER's step: 3x ERM's (S=1)


@pytest.mark.parametrize("options, says", [
    ({"lr": True}, "lr must be a number, got True"),
    ({"schedule": "linear"}, "schedule must be one of cosine, step, none, got 'linear'"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"momentum": 1.0}, "momentum must be a number in [0, 1), got 1.0"),
    ({"budget_epochs": 2}, "budget_epochs must come with a budget"),
])
def test_fit_options_of_the_library_are_checked_as_the_cli_checks_them(options, says):
    """FitOptions built in Python (no config file, no flags) gets the same one-line checks."""
    from erat.errors import UserError

    with pytest.raises(UserError) as err:
        FitOptions(**options)
    assert str(err.value).startswith(says), str(err.value)


def test_a_dataset_that_cannot_be_downloaded_says_so(tmp_path):
    """A newcomer's file-backed dataset was told to 'add --download' (its loader fetches
    nothing), and --download was accepted and ignored."""
    from erat.datasets import DataError, DatasetInfo, load_dataset
    from erat.datasets.registry import DATASETS, LOADERS, register_dataset

    @register_dataset(DatasetInfo("bars", (1, 4, 4), 2, (0.5,), (0.5,), downloadable=False))
    def bars(info, root, split, download):
        return torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1])

    try:
        with pytest.raises(DataError) as err:
            load_dataset("bars", "train")
        assert "--data-dir is required" in str(err.value) and "--download" not in str(err.value)
        with pytest.raises(DataError, match="bars cannot be downloaded: put its files in"):
            load_dataset("bars", "train", tmp_path, download=True)
        assert len(load_dataset("bars", "train", tmp_path)) == 2
    finally:
        DATASETS.pop("bars")
        LOADERS.pop("bars")
