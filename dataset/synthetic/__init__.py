"""The built-in synthetic benchmark, as a package (first step of the split: the whole former
module ``dataset/synthetic.py`` is still in ``objects.py``)."""

from dataset.synthetic.objects import (
    FORMAT_VERSION,
    SYNTHIA_FORMAT_VERSION,
    TRAIN_CITIES,
    VAL_CITIES,
    SyntheticSpec,
    ensure_synthetic,
    generate,
    main,
    render,
)

__all__ = [
    "FORMAT_VERSION",
    "SYNTHIA_FORMAT_VERSION",
    "TRAIN_CITIES",
    "VAL_CITIES",
    "SyntheticSpec",
    "ensure_synthetic",
    "generate",
    "main",
    "render",
]
