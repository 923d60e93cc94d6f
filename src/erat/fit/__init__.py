"""Training any ``nn.Module`` with any method on tensors, one concern a module:

==============  ===========================================================================
``options``     :class:`FitOptions` (how to train), :class:`FitData`, :class:`FitResult`
``sampler``     the index batches of an epoch (labeled, cycling, unlabeled)
``schedule``    how many updates (``epochs`` or ``budget``), their cost, the lr schedule
``state``       what a checkpoint holds; the best validation epoch (``best-robust``)
``validate``    per-epoch clean and PGD validation accuracy
``guard``       warnings for training that goes wrong silently
``loop``        :func:`fit`: the epochs, the update, the record
``fast``        the GPU fast path: data on the device, bf16, the update as CUDA graphs
==============  ===========================================================================

Example::

    result = fit(my_module, build_method("er", eps=1.5), FitData(x, y), FitOptions(epochs=5))
"""

from erat.fit.loop import epoch_line, fit, update
from erat.fit.options import FitData, FitOptions, FitResult
from erat.fit.sampler import EpochSampler
from erat.fit.schedule import Schedule, build_optimizer, plan
from erat.fit.validate import clean_accuracy

__all__ = ["EpochSampler", "FitData", "FitOptions", "FitResult", "Schedule", "build_optimizer",
           "clean_accuracy", "epoch_line", "fit", "plan", "update"]
