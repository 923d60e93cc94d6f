"""The GPU fast path, checked on the CPU where it can be: the compiled step is the same method
(loss and update of every method against the eager step), images kept as uint8 come back
exact, padded batches give the same outputs, a model with graph breaks and ``--fast on``
without a GPU are refused in one line. The CUDA-graph replay itself runs on a GPU only
(benchmarks/gpu_session.sh)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from erat.cli import main
from erat.fit.fast import DeviceImages, float32_head
from erat.graphs import Cloned, Padded, check_capturable, compiled
from erat.methods import Batch, build_method, method_names
from erat.rundir import RunDir

# Compiled and eager steps are compared in float64: TRADES' search starts at x + 0.001 N(0, 1),
# where the KL is ~1e-6 and its gradient's direction turns with float32 rounding (the compiled
# kernels' rounding moved the loss by 5.5% after three updates on an AMD EPYC, past the float32
# tolerance of 5% set on another CPU); in float64 every method agrees far inside this one.
TOL = 1e-8


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


@pytest.mark.slow
@pytest.mark.parametrize("name", method_names())
def test_compiled_step_is_the_eager_step(name, float64):
    params = {"eps": 0.1} if name == "fast-at" else {}
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    xu = torch.rand(16, 1, 8, 8, generator=g)
    out = {}
    for kind in ("eager", "compiled"):
        model = tiny().train()
        step = compiled(model, graphs=True) if kind == "compiled" else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(1)
        loss = build_method(name, **params)(step, Batch(x, y, xu)).loss
        loss.backward()
        before = copy.deepcopy(model.state_dict())
        opt.step()
        out[kind] = loss.item(), {k: v - before[k] for k, v in model.state_dict().items()}
    assert out["compiled"][0] == pytest.approx(out["eager"][0], rel=TOL, abs=TOL)
    # the update of every tensor, against the size of the whole update (a conv bias before
    # BatchNorm has a zero gradient up to rounding)
    scale = max(v.abs().max() for v in out["eager"][1].values() if v.is_floating_point())
    for k, eager in out["eager"][1].items():
        if eager.is_floating_point():
            assert (out["compiled"][1][k] - eager).abs().max() <= 10 * TOL * scale, k


def test_uint8_images_come_back_exact_and_floats_stay():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8).float() / 255
    stored = DeviceImages(x, torch.device("cpu"))
    assert stored.bytes and stored.store.dtype == torch.uint8
    idx = torch.tensor([4, 0, 2])
    assert torch.equal(stored[idx], x[idx])
    other = torch.rand(5, 3, 4, 4)  # not multiples of 1/255: kept as they are
    kept = DeviceImages(other, torch.device("cpu"))
    assert not kept.bytes and torch.equal(kept[idx], other[idx])


def test_padded_batches_give_the_same_outputs():
    model = tiny().eval()
    padded = Padded(model)
    for n in (1, 63, 64, 65, 3000):
        x = torch.rand(n, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(padded(x), model(x), atol=1e-6), n


class GraphTree(nn.Module):
    """CPU stand-in for torch's CUDA-graph trees (``reduce-overhead``): a forward made with no
    forward waiting for its backward starts a new generation and frees the older
    generations' saved tensors; a backward into a freed one fails as on the GPU. (A pass
    without grad waits for nothing; a backward ends the waiting: torch's
    ``running_forwards_with_pending_backwards``.)"""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.generation, self.waiting = model, 0, False
        self.calls, self.searches = 0, 0

    def forward(self, x):
        if not self.waiting:
            self.generation += 1
        self.calls += 1
        self.searches += x.requires_grad
        out, born = self.model(x), self.generation
        if out.requires_grad:
            self.waiting = True
            out.register_hook(lambda g: self._backward(born))
        return out

    def _backward(self, born: int) -> None:
        if born != self.generation:
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been "
                               "overwritten by a subsequent run")
        self.waiting = False


class Counted(nn.Module):
    """The eager side of :class:`Cloned`, counting its calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def _graphed_updates(name: str, routed: bool | None, updates: int = 3, *,
                     compile: bool = False, declared: bool = False) -> tuple[list, list]:
    """``updates`` training updates of method ``name`` on ``Cloned(GraphTree(model))`` (with
    the eager model beside it if ``routed``; None: on the model itself; ``compile``: the tree
    around ``torch.compile(model)``; ``declared``: routed from the start as the method's
    ``searches_after_clean`` says); per update its loss and the (captured, captured searches,
    eager) pass counts."""
    g = torch.Generator().manual_seed(3)
    model = tiny().train()
    method = build_method(name, **({"eps": 0.1} if name == "fast-at" else {}))
    tree, counted = GraphTree(torch.compile(model) if compile else model), Counted(model)
    overlaps = declared and getattr(method, "searches_after_clean", False)
    step = Cloned(tree, counted if routed else None, overlaps=overlaps) \
        if routed is not None else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    losses, passes = [], []
    for _ in range(updates):
        x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        counts = lambda: (tree.calls, tree.searches, counted.calls)  # noqa: E731
        before = counts()
        if isinstance(step, Cloned):
            step.start_update()
        opt.zero_grad()
        loss = method(step, Batch(x, y, torch.rand(8, 1, 8, 8, generator=g))).loss
        loss.backward()
        opt.step()
        assert not isinstance(step, Cloned) or step.pending == 0, step.pending
        losses.append(loss.item())
        passes.append(tuple(a - b for a, b in zip(counts(), before, strict=True)))
    return losses, passes


BUILT_IN = {"erm", "at", "vat", "pgd", "fast-at", "trades", "er"}  # (erat's own methods)


def _overlaps(name: str) -> bool:
    """Whether the method's clean pass waits for its backward across a search: one update
    on the stand-in tree without routing loses it."""
    try:
        _graphed_updates(name, routed=False, updates=1)
    except RuntimeError as e:
        assert "overwritten" in str(e), e
        return True
    return False


def _searches(name: str) -> bool:
    """Whether an update of the method makes an inner search (a pass on an input that
    requires grad)."""
    model, seen = tiny().train(), []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].requires_grad))
    method = build_method(name, **({"eps": 0.1} if name == "fast-at" else {}))
    method(model, Batch(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)),
                        torch.rand(8, 1, 8, 8)))
    return any(seen)


@pytest.mark.parametrize("name", method_names())
def test_the_graphs_never_lose_a_waiting_forward(name):
    """A clean pass waiting for its backward while the inner search runs its own backward
    loses its saved tensors to the next graph generation (AT, TRADES, VAT, ER: the stand-in
    fails as the GPU would). Routed (:class:`Cloned` with the eager model), every method
    trains: in the first update such a search runs eager; from the second on only the
    clean pass does, and every search step is captured; methods without the overlap (ERM,
    PGD-AT, Fast-AT) never leave the graphs. The routed losses are the eager ones."""
    overlap = _overlaps(name)
    assert overlap == (name in ("at", "trades", "vat", "er")) or name not in BUILT_IN
    losses, passes = _graphed_updates(name, routed=True)
    searches = _searches(name)
    assert searches == (name != "erm") or name not in BUILT_IN
    first, *later = passes
    assert (first[1] > 0) == (searches and not overlap) and (first[2] > 0) == overlap
    for _, captured_searches, eager in later:
        assert (captured_searches > 0) == searches and eager == overlap
    assert losses == _graphed_updates(name, routed=None)[0]


@pytest.mark.parametrize("name", method_names())
def test_a_method_says_when_its_clean_pass_waits_across_a_search(name):
    """A method's ``searches_after_clean`` routes its first update as the later ones: the
    clean pass eager from the start, every search captured (the clean pass's graph was
    compiled for one update and never used again). Said by exactly the methods that need it:
    a method that overlaps without saying it still trains (the routing learns it), but pays
    that compilation; one that says it without overlapping runs its clean pass eager."""
    declared = getattr(build_method(name, **({"eps": 0.1} if name == "fast-at" else {})),
                       "searches_after_clean", False)
    assert declared == _overlaps(name)
    losses, passes = _graphed_updates(name, routed=True, declared=True)
    if declared:
        assert len(set(passes)) == 1 and passes[0][1] > 0 and passes[0][2] == 1
    assert losses == _graphed_updates(name, routed=None)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", method_names())
def test_routed_compiled_updates_are_the_eager_ones(name, float64):
    """The routing around a real ``torch.compile`` (whose wrapper writes BatchNorm's buffers
    back, bumping their versions): three updates of every method train as the eager model
    does, within the compiled step's tolerance (a perturbed pass that wrote the running
    statistics broke the eager clean pass's backward in AT and TRADES)."""
    import torch._dynamo

    torch._dynamo.reset()
    losses, _ = _graphed_updates(name, routed=True, compile=True)
    assert losses == pytest.approx(_graphed_updates(name, routed=None)[0], rel=TOL, abs=TOL)


class Branchy(nn.Module):
    """Data-dependent control flow: a graph break in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:  # decided by the data
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


@pytest.mark.slow
def test_a_model_with_graph_breaks_is_refused():
    check_capturable(tiny(), torch.rand(2, 1, 8, 8))  # captured whole: accepted
    with pytest.raises(ValueError, match="cannot be captured.*--fast off"):
        check_capturable(Branchy(), torch.rand(2, 1, 8, 8))


def test_fast_on_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --fast on is allowed")
    code = main(["train", "--dataset", "digits", "--epochs", "1", "--fast", "on", "--device",
                 "cpu", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--fast on needs a CUDA device" in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_part_of_the_fast_path_turned_off_where_it_does_not_run_is_noted():
    """``--no-fast-bf16`` on the CPU (or with ``--fast off``) was taken without a word."""
    from erat.fit import FitOptions
    from erat.fit.fast import idle_flags

    assert idle_flags(FitOptions(), active=False) is None  # nothing turned off
    assert idle_flags(FitOptions(fast_bf16=False), active=True) is None  # it runs
    assert idle_flags(FitOptions(fast_bf16=False, fast_data=False), active=False) == (
        "note: --no-fast-data, --no-fast-bf16 change nothing here: the fast path is off (the "
        "CPU path is the eager one)")
    assert idle_flags(FitOptions(fast="off", fast_graph=False), active=False).endswith(
        "changes nothing here: the fast path is off (--fast off)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_training_on_a_gpu(tmp_path):
    code = main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "1", "--method",
                 "er", "--eps", "0.5", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0


def test_the_fast_loop_trains_with_device_data_on_the_cpu(tmp_path, monkeypatch):
    """The fast path's loop (uint8 images, batches drawn with the device's generator, bf16 and
    channels-last for a conv net, the lazy cost) run on the CPU by pretending CUDA."""
    import json

    import erat.fit.fast

    monkeypatch.setattr(erat.fit.fast, "active", lambda options, device: True)
    code = main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "2",
                 "--epoch-updates", "3", "--method", "er", "--eps", "0.5", "--no-fast-graph",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert rows[-1]["cost"] > 0


def test_under_bf16_the_output_layer_computes_in_float32():
    """Autocast leaves the logits unrounded (the energy's V_T sums T differences of losses):
    the head (the last Linear of the model's outputs, whatever the registration order) gives
    float32 logits, the float32 product of the bf16 features; the state dict is unchanged,
    and a copy or a pickle of the model keeps the head; no such layer, None."""
    import io

    model, x = tiny(), torch.rand(4, 1, 8, 8)
    keys = list(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        assert float32_head(model, 10) is model[-1]
        features = model[:-1](x)
        logits = model(x)
    assert logits.dtype == torch.float32 and list(model.state_dict()) == keys
    assert torch.equal(logits, features.float() @ model[-1].weight.T + model[-1].bias)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        with torch.no_grad():
            twin[-1].bias.add_(1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.allclose(twin(x), logits + 1.0)

    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.body = nn.Linear(16, 10), nn.Sequential(nn.Linear(64, 16), nn.ReLU())

        def forward(self, x):
            return self.head(self.body(x.flatten(1)))

    other = HeadFirst()
    assert float32_head(other, 10) is other.head
    assert float32_head(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), 10) is None
    assert float32_head(model, 10) is model[-1]  # (again: the same layer)

    class OwnLinear(nn.Linear):
        def forward(self, inp):
            return super().forward(inp) * 2

    assert float32_head(nn.Sequential(OwnLinear(2, 10)), 10) is None  # (its forward kept)


@pytest.mark.parametrize("fast", [False, True])
def test_a_non_finite_loss_stops_the_run_with_one_line(tmp_path, capsys, monkeypatch, fast):
    """The loss is read on the host every update on the CPU and every few updates on the
    fast path (no synchronisation per update there); either way a loss that blows up stops
    the run with one line and leaves no run folder behind."""
    import erat.fit.fast

    monkeypatch.setattr(erat.fit.fast, "active", lambda options, device: fast)
    code = main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "2",
                 "--epoch-updates", "3", "--method", "erm", "--lr", "1e8", "--no-fast-graph",
                 "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "the training loss became" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_double_backward_method_trains_eager_under_compile(tmp_path, capsys):
    """ER's gradient estimator differentiates through an input gradient, which a compiled
    graph cannot: ``--compile`` (and the fast path's graphs) leave its model eager, said in
    one note, and the run trains."""
    code = main(["train", "--dataset", "digits", "--epochs", "1", "--epoch-updates", "2",
                 "--method", "er", "--estimator", "gradient", "--compile", "--no-progress",
                 "--out", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert code == 0 and "double backward" in out.out + out.err
    assert "compiled step failed" not in out.out + out.err


def test_a_compiled_step_that_fails_goes_on_eager(tmp_path, capsys, monkeypatch):
    """A failed compilation or replay is not always a RuntimeError that names a graph
    (Inductor's and the CUDA-graph trees' assertions are not): it crashed the run; the run now
    goes on eager, said once."""
    import erat.fit.loop

    class Broken(nn.Module):
        def forward(self, x):
            raise AssertionError("unexpected state of the graph trees")

    monkeypatch.setattr(erat.fit.loop, "step_module", lambda model, method, **_: Broken())
    code = main(["train", "--dataset", "digits", "--epochs", "1", "--epoch-updates", "3",
                 "--compile", "--no-progress", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and out.count("the compiled step failed (unexpected state") == 1, out
    assert (tmp_path / "run" / "model.pt").exists()


def test_graphs_run_without_cuda_graph_replay_are_warned_of(tmp_path, capsys, monkeypatch):
    """torch runs a compiled graph without CUDA-graph replay (a "cudagraph skip") silently
    unless an opt-in log is on: the fast path lost its speed unseen. The run says so, once
    for each epoch that adds skips."""
    import erat.fit.loop

    skips = iter([0, 2, 2, 2, 2])  # (read at the start, then after each epoch)
    monkeypatch.setattr(erat.fit.loop, "cudagraph_skips", lambda: next(skips, 2))
    code = main(["train", "--dataset", "digits", "--epochs", "2", "--epoch-updates", "2",
                 "--compile", "--no-progress", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and out.count("2 compiled graph(s) ran without CUDA graphs") == 1, out
    # the first compiled update (compilation included) is timed apart, in epoch 1 only
    rows = RunDir(tmp_path / "run").metrics()
    assert 0 < rows[0]["compile_seconds"] <= rows[0]["seconds"]
    assert "compile_seconds" not in rows[1] and out.count(" compiling)") == 1, out


def test_a_compiled_pass_takes_the_clean_statistics_as_inputs():
    """Inside ``shared_statistics`` a compiled later pass reads the clean pass's BatchNorm
    statistics as ordinary inputs: kept in the module (a closure of its forward), Dynamo took
    them for fixed-address weights, and CUDA graphs are recorded again whenever such an
    address changes (every update)."""
    from erat.passes import shared_statistics

    static: dict[str, object] = {}
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                static[node.name] = node.meta.get("tensor_dict", {}).get(
                    "_dynamo_static_input_type")
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    for _ in range(3):  # (three models of one architecture: a run of a suite each)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                              nn.Linear(144, 10))
        compiled_model = torch.compile(model, backend=backend)
        for _ in range(2):
            x = torch.rand(4, 3, 8, 8)
            with shared_statistics(model):
                clean = model(x)  # (the clean pass, eager, records the statistics)
                (compiled_model(x + 0.1).sum() + clean.sum()).backward()
    stats = [name for name in static if "recorded" in name or "closure" in name]
    assert len(stats) == 2 and all(static[name] is None for name in stats), static
    assert any(v is not None for v in static.values())  # (the weights are static: the probe
    # reads what it should)
    assert len(compiled) == 1  # (keyed by a layer's id, each new model compiled again)
