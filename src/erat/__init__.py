"""erat: Energy-Regularized Adversarial Training (Zhang, Huang, Xu, arXiv 1911.06479).

Python API::

    import erat
    model = erat.load_model("runs/digits-er")          # eval mode, inputs in [0, 1] -> logits
    x, y = erat.load_dataset("digits", split="test").tensors
"""

__version__ = "0.2.0"


def load_model(path, device="cpu"):
    """The trained model of a run folder or ``model.pt`` file, in eval mode, on ``device``
    (``auto``, ``cpu``, ``cuda``, ...; :func:`erat.rundir.load_model`)."""
    from erat.rundir import load_model as _load

    return _load(path, device)


def load_dataset(name, split="test", data_dir=None, download=False, *, test_split=None,
                 resize=None):
    """The same data the CLI uses, as a ``TensorDataset`` of ``x`` in [0, 1] and labels (your
    own ``folder:PATH`` or ``npz:PATH`` with the ``test_split`` and ``resize`` it was trained
    with; :func:`erat.datasets.load_dataset`)."""
    from erat.datasets import load_dataset as _load

    return _load(name, split, data_dir, download, test_split=test_split, resize=resize)


__all__ = ["__version__", "load_dataset", "load_model"]
