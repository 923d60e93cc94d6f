"""Speed figures, the one home of erat's speed code (``erat bench``; the GPU session script
``benchmarks/gpu_session.sh`` calls it): milliseconds per training step of every method,
eager or ``torch.compile``d, in float32 or mixed precision, and attack throughput.

``bench_training`` times ``method(model, batch)`` + backward + optimiser step on random
inputs in [0, 1] (median over the timed steps, after warm-up) and reports each method's
ratio to ``erm`` measured in the same process and variant. ``bench_attacks`` measures PGD throughput
of :func:`erat.search.pgd`, of the same PGD in ``torchattacks`` when that package is
installed (the peer ratio), and of AutoAttack on a few images. Peak memory is CUDA's
allocator peak on a GPU and the process's peak resident size on the CPU (monotone across
methods there, so read it as an upper bound).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from erat.errors import UserError, first_line
from erat.fields import param
from erat.fit.fast import float32_head, needs_cuda, optimizer_kwargs
from erat.graphs import Cloned, cudagraph_skips, step_module
from erat.losses import cross_entropy
from erat.methods import Batch, build_method, method_names
from erat.models import MODELS, build_model
from erat.models.factory import is_factory
from erat.passes import sample_outputs, supervised_search
from erat.search import pgd, pgd_step_size
from erat.threat import Threat


@dataclass
class BenchOptions:
    """The settings of ``erat bench`` (each a flag)."""

    models: str = param("cnn:1x28x28,conv-large:3x32x32,preact-resnet18:3x32x32",
                        "MODEL:CxHxW, comma-separated (MODEL: a registered name or your "
                        "own MODULE:FACTORY)")
    methods: str = param("all", "methods, comma-separated (all: every registered one); "
                                "NAME:key=value;... sets a parameter (er:S=3); a step is "
                                "timed on a labeled batch alone unless --unlabeled N")
    batch_size: int = param(128, "batch size")
    unlabeled: int = param(0, "unlabeled images beside each labeled batch (0: none): the "
                              "semi-supervised step of the methods that read them")
    steps: int = param(20, "timed steps per method (at most)")
    warmup: int = param(2, "untimed steps before the timed ones")
    max_seconds: float = param(20.0, "time budget per method and variant")
    amp: str = param("none", "precisions, comma-separated: none, bf16, fp16")
    compile: str = param("off", "torch.compile the model: off, on, or off,on (both, compared)")
    fast: str = param("off", "the training fast path (CUDA graphs, bf16, channels-last, fused "
                             "optimiser): off, on, or off,on")
    chip: bool = param(False, "the device's bf16 matrix rate and each model's FLOPs per image: "
                              "the fraction of the rate every step reaches, a 50,000-image "
                              "epoch's time")
    profile: bool = param(False, "each step's kernel count and device-busy share (GPU)")
    channels_last: bool = param(False, "channels-last memory format")
    attacks: bool = param(True, "measure attack throughput")
    attack_steps: int = param(10, "PGD steps of the attack throughput")
    autoattack_n: int = param(16, "images of the AutoAttack throughput (0: none)")
    device: str = param("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")

    def check(self, device: torch.device) -> None:
        """Refuse, before any work, a setting the bench cannot run (a :class:`UserError`
        naming its flag): counts out of range, a budget that is not a positive, finite
        number of seconds, unknown methods, ill-formed ``--models``, unknown variants, and the fast
        path off CUDA (as ``erat train --fast on`` refuses it)."""
        for flag, value, low in (("--steps", self.steps, 1), ("--warmup", self.warmup, 0),
                                 ("--batch-size", self.batch_size, 1),
                                 ("--unlabeled", self.unlabeled, 0),
                                 ("--attack-steps", self.attack_steps, 1),
                                 ("--autoattack-n", self.autoattack_n, 0)):
            if value < low:
                raise UserError(f"bench needs {flag} >= {low}, got {value}")
        if not self.max_seconds > 0:  # (inf: every one of --steps; NaN is refused too)
            raise UserError(f"--max-seconds wants a positive number of seconds (inf: no "
                            f"limit), got {self.max_seconds}")
        names = method_names() if self.methods == "all" else self.methods.split(",")
        if not all(n.strip() for n in names):
            raise UserError(f"--methods: an empty name in {self.methods!r}; give names "
                            f"separated by commas, among {', '.join(method_names())} (or all)")
        unknown = {parse_method(n)[0] for n in names} - set(method_names())
        if unknown:
            raise UserError(f"--methods: unknown method(s) {', '.join(sorted(unknown))}; "
                            f"choose among {', '.join(method_names())} (or all)")
        for spec in names:  # (a parameter the method does not take: before the table)
            try:
                base, params = parse_method(spec)
                build_method(base, **params)
            except UserError as err:
                raise UserError(f"--methods {spec}: {err}") from None
        for name, _ in parse_setups(self.models):
            if is_factory(name):
                continue
            try:
                MODELS.lookup(name)
            except UserError as err:  # (the registry's message: the names it holds)
                raise UserError(f"--models: {err}, or MODULE:FACTORY") from None
        for flag, text, allowed in (("--amp", self.amp, ("none", "bf16", "fp16")),
                                    ("--compile", self.compile, ("off", "on")),
                                    ("--fast", self.fast, ("off", "on"))):
            if set(text.split(",")) - set(allowed):
                raise UserError(f"{flag} takes {', '.join(allowed)} (comma-separated), got "
                                f"{text!r}")
        if "on" in self.fast.split(","):
            needs_cuda(device, "the bench", "use --fast off")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _time(
    fn: Callable[[], Any], device: torch.device, steps: int, warmup: int, max_seconds: float
) -> list[float]:
    """Milliseconds of each timed call; stops early past ``max_seconds`` (at least 3 calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < steps and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return times


def _time_pair(
    fa: Callable[[], Any], fb: Callable[[], Any], device: torch.device, steps: int,
    max_seconds: float,
) -> tuple[list[float], list[float]]:
    """:func:`_time` of two functions called alternately (one warm-up call each)."""
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    while len(a) < steps and (len(a) < 3 or time.perf_counter() - start < 2 * max_seconds):
        a += _time(fa, device, 1, 1 if not a else 0, max_seconds)
        b += _time(fb, device, 1, 1 if not b else 0, max_seconds)
    return a, b


def random_batch(
    shape: tuple[int, int, int], batch_size: int, device: torch.device, num_classes: int = 10,
    unlabeled: int = 0, channels_last: bool = False,
) -> Batch:
    """Random images and labels, with ``unlabeled`` random images as the unlabeled batch."""
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(batch_size, *shape, generator=g).to(device, memory_format=layout)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    xu = torch.rand(unlabeled, *shape, generator=g).to(device, memory_format=layout) \
        if unlabeled else None
    return Batch(x, y, xu)


def bench_training(
    model_name: str,
    shape: tuple[int, int, int],
    methods: Sequence[str],
    *,
    batch_size: int = 128,
    unlabeled: int = 0,
    steps: int = 20,
    warmup: int = 2,
    max_seconds: float = 20.0,
    device: torch.device | None = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    amp: str = "none",
    channels_last: bool = False,
    compiled: bool = False,
    fast: bool = False,
    profile: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per method: ``ms_per_step`` (median), ``ratio_to_erm``, ``peak_mem_mb``, and
    the counted ``passes_per_example`` (per labeled image) with its ``counted_ratio_to_erm``.

    A method is a name or ``name:key=value;key=value`` (e.g. ``er:S=3``; its parameters are
    parsed as YAML scalars) beside ``method_params`` by name. ``amp`` is ``none``, ``bf16``
    or ``fp16`` (autocast, with a gradient scaler for fp16); ``compiled`` runs the method on
    ``torch.compile(model)`` (its first steps, the compilation, are warm-up); ``fast`` is the
    training fast path (:mod:`erat.fit.fast`: the model as CUDA graphs, bf16 and
    channels-last for convolutional models, a fused optimiser); ``profile`` adds each step's
    kernel count and the share of its time the device is busy (:func:`kernel_profile`);
    ``unlabeled`` random images go beside each labeled batch (their readers' step); ``on_row``
    is called with each row as it is measured; a method that differentiates twice
    (ER's gradient estimator) runs on the model itself. A step that raises (a failed capture
    or compilation) is a row with its ``error``. Rows come in the order of ``methods``, ERM
    first (each row's ratio to ERM is known when it is measured).
    """
    device = device or torch.device("cpu")
    if fast:
        conv = any(isinstance(m, nn.Conv2d) for m in _model(model_name, shape, device).modules())
        amp, channels_last = ("bf16", True) if conv else (amp, channels_last)
    batch = random_batch(shape, batch_size, device, unlabeled=unlabeled,
                         channels_last=channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    rows = []
    for name in ["erm", *[m for m in methods if m != "erm"]]:
        model = _row_model(model_name, shape, device, channels_last, dtype is not None, batch.x)
        base, params = parse_method(name)
        method = build_method(base, **{**(method_params or {}).get(base, {}), **params})
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                              **(optimizer_kwargs(device) if fast else {}))
        stepped = step_module(model, method, graphs=fast, compile=compiled)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step(model=stepped, method=method, opt=opt, scaler=scaler) -> None:
            if isinstance(model, Cloned):
                model.start_update()  # (as the training loop does)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss = method(model, batch).loss
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        row = {"model": model_name, "method": name, "batch_size": batch_size,
               "unlabeled": unlabeled if method.uses_unlabeled else 0, "amp": amp, "fast":
               fast, "compiled": compiled and stepped is not model, "channels_last": channels_last}
        skips = cudagraph_skips()
        row |= (_measured(step, device, steps, warmup, max_seconds, profile, batch_size)
                | {"passes_per_example": method.cost(batch, model.train()) / batch_size,
                   "cudagraph_skips": cudagraph_skips() - skips}
                | (_graph_passes(stepped) if isinstance(stepped, Cloned) else {}))
        rows.append(row)
        row["ratio_to_erm"] = row["ms_per_step"] / rows[0]["ms_per_step"]  # (ERM: measured first)
        row["counted_ratio_to_erm"] = row["passes_per_example"] / rows[0]["passes_per_example"]
        if on_row is not None:
            on_row(row)
    return [r for r in rows if r["method"] in methods]


def _row_model(name: str, shape: tuple[int, ...], device: torch.device, channels_last: bool,
               autocast: bool, x: Tensor) -> nn.Module:
    """The model of one row: channels-last when asked; under ``autocast`` its output layer in
    float32, as the training loop has it (:func:`erat.fit.fast.float32_head`)."""
    model = _model(name, shape, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if autocast:
        float32_head(model, sample_outputs(model, x).shape[1])
    return model


def _graph_passes(model: Cloned) -> dict[str, int]:
    """The last step's model calls replayed as CUDA graphs and run eager
    (:class:`erat.graphs.Cloned`'s routing): what the fast path leaves uncaptured."""
    return {"graph_passes": model.passes["graph"], "eager_passes": model.passes["eager"]}


def _measured(step: Callable[[], Any], device: torch.device, steps: int, warmup: int,
              max_seconds: float, profile: bool, batch_size: int) -> dict[str, Any]:
    """The timing columns of one row; a step that raises (a failed capture or compilation:
    Dynamo's, Inductor's and the CUDA-graph trees' errors are not all a ``RuntimeError``)
    gives its ``error`` and NaNs, so the other rows still run (on a GPU after resetting
    Dynamo and its CUDA-graph trees, which the failure may have left half-recorded)."""
    try:
        times = _time(step, device, steps, warmup, max_seconds)
    except Exception as err:  # (one failed row is a row, not the end of the bench)
        if device.type == "cuda":
            import torch._dynamo

            torch._dynamo.reset()
        nan = float("nan")
        return {"error": first_line(err)[:300], "ms_per_step": nan, "images_per_s": nan,
                "timed_steps": 0, "peak_mem_mb": nan}
    ms = statistics.median(times)
    return {"ms_per_step": ms, "images_per_s": batch_size / (ms / 1000),
            "timed_steps": len(times), "peak_mem_mb": round(_peak_mb(device), 1),
            **(kernel_profile(step, device, ms) if profile else {})}


def _model(name: str, shape: tuple[int, int, int], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_shape=shape, num_classes=10, mean=[0.5] * shape[0],
                       std=[0.25] * shape[0]).to(device).train()


def kernel_profile(step: Callable[[], Any], device: torch.device, ms_per_step: float | None = None,
                   steps: int = 3) -> dict:
    """What holds a step back from the chip: kernels launched per step, and the share of the
    step's wall time that the device spends in kernels (the rest: launch gaps, host work,
    synchronisation), from ``torch.profiler`` over ``steps`` steps. The wall time is the
    unprofiled ``ms_per_step`` when given (the profiler slows the host), else the profiled
    steps' own time, taken inside the profiler (its start and stop are not the step's).
    Off CUDA there are no device kernels: both are ``None``, and no profiler is started
    (kineto's probe for a GPU would print errors)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return {"kernels_per_step": None, "device_busy": None}
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            wall = (time.perf_counter() - t0) / steps
    except RuntimeError as err:  # (a profiler that cannot start is one field, not the bench)
        return {"profile_error": first_line(err)}
    if ms_per_step is not None:
        wall = ms_per_step / 1000
    try:
        events = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(e.device_time for e in events) / 1e6 / steps  # microseconds in events
    except (AttributeError, RuntimeError) as err:  # (the profiler's API moves between releases)
        return {"profile_error": first_line(err)}
    if not events:  # (a step runs kernels: none recorded is the profiler's, e.g. graph replays)
        return {"profile_error": "the profiler recorded no device kernels"}
    return {"kernels_per_step": len(events) / steps, "device_busy": busy / wall}


def matrix_rate(device: torch.device, n: int = 8192, seconds: float = 3.0) -> float:
    """The device's measured dense bf16 matrix-multiply rate in TFLOP/s (``n x n`` by
    ``n x n``, ``2 n^3`` FLOPs each; float32 and ``n = 1024`` on a CPU), the ceiling a
    training step is held against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = _time(lambda: a @ b, device, 1000, 3, seconds)
    return 2 * n ** 3 / (statistics.median(times) / 1000) / 1e12


def flops_per_image(name: str, shape: tuple[int, int, int], device: torch.device) -> dict:
    """FLOPs of one ERM training step per image (forward and backward) and of the forward
    alone, counted by ``torch.utils.flop_counter`` on a batch of 8."""
    from torch.utils.flop_counter import FlopCounterMode

    model, batch = _model(name, shape, device), random_batch(shape, 8, device)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(batch.x)
    with FlopCounterMode(display=False) as both:
        cross_entropy(model(batch.x), batch.y).mean().backward()
    return {"train_step": both.get_total_flops() / 8, "forward": forward.get_total_flops() / 8}


def bench_attacks(
    model: nn.Module,
    shape: tuple[int, int, int],
    *,
    batch_size: int = 128,
    eps: float = 2.0,
    steps: int = 10,
    repeats: int = 5,
    autoattack_n: int = 16,
    device: torch.device | None = None,
    max_seconds: float = 30.0,
) -> dict[str, Any]:
    """Images per second of PGD-l2 (erat, torchattacks if installed) and AutoAttack-l2."""
    device = device or torch.device("cpu")
    batch = random_batch(shape, batch_size, device)
    model = model.to(device).eval()
    with torch.no_grad():  # label every image as predicted, so every image is attacked
        batch.y = model(batch.x).argmax(1)
    threat, alpha = Threat("l2", eps), pgd_step_size(eps, steps)
    out: dict[str, Any] = {"pgd_steps": steps, "eps": eps, "batch_size": batch_size}

    def ours() -> None:
        with supervised_search(model):
            pgd(
                lambda z: cross_entropy(model(z), batch.y),
                batch.x,
                threat,
                steps=steps,
                step_size=alpha,
            )

    try:
        import torchattacks
    except ImportError:
        ms = statistics.median(_time(ours, device, repeats, 1, max_seconds))
        out["torchattacks"] = "not installed (pip install torchattacks)"
    else:
        attack = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        # interleaved, call by call, so that a change in machine load hits both alike
        ours_ms, peer_ms = _time_pair(ours, lambda: attack(batch.x, batch.y), device, repeats,
                                      max_seconds)
        ms, ms_peer = statistics.median(ours_ms), statistics.median(peer_ms)
        out["torchattacks_pgd_images_per_s"] = batch_size / (ms_peer / 1000)
        out["pgd_speedup_vs_torchattacks"] = ms_peer / ms
    out["pgd_images_per_s"] = batch_size / (ms / 1000)
    if autoattack_n > 0:
        from erat.evaluate import evaluate

        n = min(autoattack_n, batch_size)
        t0 = time.perf_counter()
        evaluate(
            model, batch.x[:n], batch.y[:n], attack="autoattack", norm="l2", eps=[eps], checks=False
        )
        out["autoattack_images_per_s"] = n / (time.perf_counter() - t0)
        out["autoattack_note"] = "random images labelled as predicted; robust images cost more"
    return out


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``er:S=3;T=2`` -> ``("er", {"S": 3, "T": 2})``."""
    import yaml

    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(";")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--methods wants NAME or NAME:key=value;..., got {spec!r}")
        params[key.strip()] = yaml.safe_load(value)
    return name, params


def parse_setups(text: str) -> list[tuple[str, tuple[int, int, int]]]:
    """``MODEL:CxHxW,...`` as (name, shape) pairs; C, H and W are positive integers, the
    shape after the last colon (``MODEL`` may be ``MODULE:FACTORY``)."""
    setups = []
    for item in text.split(","):
        name, _, shape = item.rpartition(":")
        try:
            c, h, w = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            c = h = w = 0
        if min(c, h, w) < 1:
            raise UserError(f"--models wants MODEL:CxHxW items, C, H and W positive integers, "
                            f"got {item!r}")
        setups.append((name, (c, h, w)))
    return setups


def run_bench(options: BenchOptions, device: torch.device, log=print,
              partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``erat bench``: every method's step time on each model in each variant (precision,
    eager, compiled or the fast path), the measured ratio to ERM beside the counted one
    (:meth:`Method.cost`), with ``chip`` the fraction of the device's matrix rate each step
    reaches, and attack throughput; printed as a table. ``partial`` is given the result so
    far after each measured row (what a time limit cuts short is not lost), with
    ``complete`` false; the result returned has it true. Every option is checked first
    (:meth:`BenchOptions.check`)."""
    o = options
    o.check(device)
    names = method_names() if o.methods == "all" else o.methods.split(",")
    variants = _variants(o)
    result: dict[str, Any] = {"complete": False, "device": str(device),
                              "threads": torch.get_num_threads(),
                              "torch": str(torch.__version__),
                              "settings": dataclasses.asdict(o), "models": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    if o.chip:
        result["matrix_tflops"] = matrix_rate(device)
        log(f"matrix rate {result['matrix_tflops']:.3g} TFLOP/s "
            f"({'bf16' if device.type == 'cuda' else 'float32'})")
    log(f"device {device}, {torch.get_num_threads()} CPU threads, batch {o.batch_size}"
        + (f" + {o.unlabeled} unlabeled (read by {', '.join(_readers(names))})"
           if o.unlabeled else "") + "; "
        f"ms/step: the median of up to {o.steps} timed steps (within {o.max_seconds:g} s) "
        f"after {o.warmup} untimed; x erm: measured, counted: passes per example "
        f"(Method.cost), both against ERM's; peak MB: "
        + ("the allocator's peak" if device.type == "cuda" else "the process's peak RSS"))
    if o.chip:
        log("% of rate: FLOPs counted as passes per example times an ERM step's third; a "
            "search's backward (input gradients only) counts as a training one, so the "
            "methods with a search are overstated (ERM's is exact)")
    if o.profile and device.type != "cuda":
        log("note: --profile counts device kernels: on the CPU it adds nothing")
    log(f"{'model':<16} {'variant':<16} {'method':<20} {'ms/step':>9} {'img/s':>8} "
        f"{'x erm':>6} {'counted':>8} {'peak MB':>8}" + ("  % of rate" if o.chip else ""))
    for name, shape in parse_setups(o.models):
        rows: list[dict[str, Any]] = []
        entry: dict[str, Any] = {"shape": list(shape), "rows": rows}
        result["models"][name] = entry
        if o.chip:  # (first: a run cut short keeps every column of the rows it measured)
            entry["flops_per_image"] = flops_per_image(name, shape, device)

        def measured(row: dict[str, Any], rows: list = rows, entry: dict = entry,
                     name: str = name) -> None:
            if o.chip:
                _chip_columns([row], entry["flops_per_image"]["train_step"],
                              result["matrix_tflops"])
            rows.append(row)
            log(_row_line(name, row, o.chip))
            if partial is not None:
                partial(result)

        for amp, comp, fast in variants:
            start = len(rows)
            rows[start:] = bench_training(
                name, shape, names, batch_size=o.batch_size, unlabeled=o.unlabeled,
                steps=o.steps,
                warmup=o.warmup + 3 * (comp or fast), max_seconds=o.max_seconds,
                device=device, amp=amp, channels_last=o.channels_last, compiled=comp,
                fast=fast, profile=o.profile, on_row=measured)
        if o.attacks:
            entry["attacks"] = bench_attacks(_model(name, shape, device).eval(), shape,
                                             batch_size=o.batch_size, steps=o.attack_steps,
                                             repeats=min(5, o.steps), device=device,
                                             autoattack_n=o.autoattack_n,
                                             max_seconds=o.max_seconds)
            log(f"{name:<16} attacks: " + _attack_line(entry["attacks"]))
    result["complete"] = True
    return result


def _readers(names: Sequence[str]) -> list[str]:
    """The methods among ``names`` that read an unlabeled batch (or "none of them")."""
    def reads(spec: str) -> bool:
        base, params = parse_method(spec)
        return build_method(base, **params).uses_unlabeled

    return [n for n in names if reads(n)] or ["none of them"]


def _row_line(name: str, r: dict[str, Any], chip: bool) -> str:
    """The console's line of one measured row."""
    variant = "fast" if r["fast"] else r["amp"] + ("+compile" if r["compiled"] else "") \
        + ("+cl" if r.get("channels_last") else "")
    return (f"{name:<16} {variant:<16} {r['method']:<20} {r['ms_per_step']:>9.1f} "
            f"{r['images_per_s']:>8.0f} {r['ratio_to_erm']:>6.2f} "
            f"{r['counted_ratio_to_erm']:>8.2f} {r['peak_mem_mb']:>8.0f}"
            + (f"  {r['rate_fraction']:>9.1%}" if chip else "")
            + (f"  eager passes {r['eager_passes']}/{r['eager_passes'] + r['graph_passes']}"
               if "eager_passes" in r else "")
            + (f"  cudagraph skips {r['cudagraph_skips']}" if r.get("cudagraph_skips") else "")
            + (f"  profile: {r['profile_error']}" if "profile_error" in r else "")
            + (f"  error: {r['error']}" if "error" in r else ""))


def _attack_line(a: dict[str, Any]) -> str:
    """The console's line of :func:`bench_attacks`' figures (the JSON holds them all)."""
    parts = [f"PGD-{a['pgd_steps']} {a['pgd_images_per_s']:.0f} img/s"]
    if "torchattacks_pgd_images_per_s" in a:
        parts.append(f"torchattacks {a['torchattacks_pgd_images_per_s']:.0f} img/s "
                     f"(ours x{a['pgd_speedup_vs_torchattacks']:.2f})")
    elif "torchattacks" in a:
        parts.append(f"torchattacks {a['torchattacks']}")
    if "autoattack_images_per_s" in a:
        parts.append(f"AutoAttack {a['autoattack_images_per_s']:.1f} img/s (random images)")
    return "; ".join(parts) + f" (eps {a['eps']}, batch {a['batch_size']})"


def _variants(o: BenchOptions) -> list[tuple[str, bool, bool]]:
    """``(amp, compiled, fast)`` of every variant asked for, in the order of ``--fast`` (the
    fast path sets its own precision and capture: one variant), from options
    :meth:`BenchOptions.check` passed."""
    amps, compiles = o.amp.split(","), o.compile.split(",")
    plain = [(a, c == "on", False) for a in amps for c in compiles]
    return [v for f in o.fast.split(",") for v in (plain if f == "off" else
                                                   [("none", False, True)])]


def _chip_columns(rows: list[dict[str, Any]], step_flops: float, tflops: float) -> None:
    """The fraction of the matrix rate a step reaches (its counted passes, in ERM steps,
    times an ERM step's FLOPs per image: an upper estimate for a method with a search, whose
    backward passes compute no weight gradients) and the time of a 50,000-image epoch."""
    for r in rows:
        flops = r["images_per_s"] * step_flops * r["passes_per_example"] / 3.0
        r["rate_fraction"] = flops / (tflops * 1e12)
        r["epoch_50k_s"] = 50_000 / r["images_per_s"]
