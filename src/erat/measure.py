"""The energy of a trained model on test data (``erat energy``): a strong estimate in eval
mode, the end-point terms that AT and VAT minimise, and the certified fraction.

METHOD.md sections 2-3: ``E_hat`` from a PGD-searched direction, random directions and the
FGM ray; AT's term ``l(x + eps u_fgm) - l(x)`` and VAT's term ``v(x + eps d_vat)``, lower
bounds of the energy; the certificate ``l(x) + E_hat(x) < ln 2``. In the l2 or the l-inf
ball (``norm``, section 3d: l-inf PGD, FGSM's ray ``sign(g)``, VAT's ``sign(d)``, random
sign vectors).

Example::

    report = energy_report(model, x_test[:1000], y_test[:1000], eps=2.0)
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from erat import fields
from erat.energy import CERTIFICATE_NOTE, certify, check_settings, energy
from erat.errors import UserError
from erat.inputs import images, labels, within_outputs
from erat.inputs import logits as checked_logits  # (the name logits is the batch's, below)
from erat.losses import cross_entropy, supervised_loss, virtual_loss
from erat.passes import sample_outputs, supervised_search
from erat.search import XI, fgm_direction, vat_direction, vat_step
from erat.threat import Norm, check_radius_fits


def _summary(prefix: str, v: Tensor) -> dict[str, float]:
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    p10, p25, p50, p75, p90 = torch.quantile(v.double(), q).tolist()
    return {f"{prefix}_mean": v.double().mean().item(), f"{prefix}_median": p50,
            f"{prefix}_std": v.double().std().item() if v.numel() > 1 else 0.0,
            f"{prefix}_p10": p10, f"{prefix}_p25": p25, f"{prefix}_p75": p75,
            f"{prefix}_p90": p90, f"{prefix}_max": v.max().item()}


def _report_batch(model: nn.Module, x: Tensor, y: Tensor, s: dict) -> dict[str, Tensor]:
    """Per-sample report quantities for one batch (model already in eval mode)."""
    norm = s["norm"]
    run = partial(energy, x=x, eps=s["eps"], T=s["T"], max_points=s["max_points"], norm=norm)
    with torch.no_grad():
        logits = checked_logits(model(x), len(x), "test images")
    l0, ce = cross_entropy(logits, y), supervised_loss(model, y)
    zero, v = torch.zeros_like(l0), virtual_loss(model, logits)
    with torch.no_grad():  # the searches re-enable grad, for the input only
        fgm_ray = run(ce, M=1, first_direction=fgm_direction(ce, x, norm), loss_at_x=l0)
        strong = run(ce, M=s["M"], S=s["S"], loss_at_x=l0)
        d = vat_step(vat_direction(model, x, logits, xi=s["xi"],
                                   power_iters=s["power_iters"]), norm)
        vat_ray = run(v, M=1, first_direction=d, loss_at_x=zero)
        strong_v = run(v, M=s["M"], S=s["S"], first_direction=d, loss_at_x=zero)
    e = torch.maximum(strong.value, fgm_ray.value)  # max over the union of directions
    return {"loss": l0, "correct": (logits.argmax(1) == y).float(), "energy": e,
            **({"energy_random": strong.per_direction[:, 1:].mean(1)} if s["M"] > 1 else {}),
            "at_term": fgm_ray.ray_losses[:, 0, -1] - l0,
            "vat_term": vat_ray.ray_losses[:, 0, -1],
            "virtual_energy": torch.maximum(strong_v.value, vat_ray.value),
            "certified": certify(l0, e).float()}


# the strong estimate's defaults (energy_report, erat energy's flags, a suite's energy)
STRONG = {"T": 16, "M": 16, "S": 20}
STRONG_HELP = {"T": "ray segments", "M": "directions (1 searched + M-1 random)",
               "S": "PGD steps searching the first direction"}


def energy_report(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, T: int = STRONG["T"],
    M: int = STRONG["M"], S: int = STRONG["S"], batch_size: int = 128, seed: int = 0,
    xi: float = XI, power_iters: int = 1, max_points: int = 8192, norm: Norm = "l2",
) -> dict:
    """Energy statistics of a trained model on ``x`` [N, ...], ``y`` [N] (``erat energy``).

    A strong estimate in eval mode, without gradients to the weights: ``u_1`` from
    ``S``-step PGD in ``norm``, ``M - 1`` random directions, ``T`` segments, plus the FGM ray
    (so ``E_hat`` covers AT's direction; FGSM's in l-inf); for the virtual loss, VAT's
    direction (``xi``, ``power_iters``; ``sign(d)`` in l-inf) refined by ``S`` PGD steps, plus
    its own ray. Reports AT's term ``l(x + eps u_fgm) - l(x)``, VAT's term
    ``v(x + eps d_vat)``, both energies, the mean over random directions (``Ebar``; None
    for ``M = 1``) and the certified fraction ``l(x) + E_hat(x) < ln 2``. Per sample until
    the final statistics; JSON-ready. ``norm="linf"`` warns once for an l2-sized radius
    (``check_radius``).

    Returns a dict: ``n``, ``clean_acc``, ``loss_mean``, ``classes``; ``energy_mean``,
    ``_std``, ``_median``, ``_max``, ``_p10``, ``_p25``, ``_p75``, ``_p90`` and the same for
    ``virtual_energy_``; ``energy_random_mean`` (None for ``M = 1``); ``at_term_mean``,
    ``vat_term_mean``; ``certified_frac`` and ``certificate_note``; ``settings``.

    Example::

        report = energy_report(model, x_test[:1000], y_test[:1000], eps=2.0)
    """
    if isinstance(eps, str):  # (as the command line takes a radius, and evaluate: "8/255")
        try:
            eps = fields.number(eps.strip())
        except fields.BadValue as err:
            raise UserError(f"eps: {err}") from None
    check_settings(eps, T, M, S, "max", norm)
    fields.integer("batch_size", batch_size, 1)
    eps = float(eps)  # (a NumPy radius: a plain number in the report)
    y = labels(y, len(images(x)))
    check_radius_fits(eps, norm, tuple(x.shape[1:]), name="eps")
    s = {"eps": eps, "norm": norm, "T": T, "M": M, "S": S, "n": len(y), "seed": seed,
         "xi": xi, "power_iters": power_iters, "reduce": "max", "mode": "eval",
         "batch_size": batch_size, "max_points": max_points}
    device = next((p.device for p in model.parameters()), x.device)  # (measured there)
    x, y = x.to(device), y.to(device)
    cuda = [device] if device.type == "cuda" else []
    parts: list[dict[str, Tensor]] = []
    sample = sample_outputs(model, x)
    within_outputs(y, sample)
    with supervised_search(model), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            got = _report_batch(model, xb, yb, s)
            parts.append({k: v.detach().cpu() for k, v in got.items()})
    r = {k: torch.cat([p[k] for p in parts]).double() for k in parts[0]}
    out = {"n": len(y), "clean_acc": r["correct"].mean().item(),
           "loss_mean": r["loss"].mean().item(), "classes": int(sample.shape[-1])}
    out |= _summary("energy", r["energy"]) | _summary("virtual_energy", r["virtual_energy"])
    out |= {"energy_random_mean": r["energy_random"].mean().item() if "energy_random" in r
            else None,  # (M = 1: no random direction)
            "at_term_mean": r["at_term"].mean().item(),
            "vat_term_mean": r["vat_term"].mean().item(),
            "certified_frac": r["certified"].mean().item(),
            "certificate_note": CERTIFICATE_NOTE, "settings": s}
    return out
