"""pycocotools, imported where it is used: it comes with the `downstream` extra, so its absence is a setup error
with the install command, not an ImportError traceback. Its chatty loaders are run with their prints captured."""

from __future__ import annotations

import contextlib
import io
from types import ModuleType
from typing import Any

from vitkd.errors import ConfigError

INSTALL_HINT = "pip install 'vitkd[downstream]'"


def pycocotools_mask() -> ModuleType:
    """`pycocotools.mask` (RLE encode/decode, areas, boxes of masks)."""
    try:
        from pycocotools import mask
    except ImportError:
        raise ConfigError(f"COCO masks and COCO AP need the pycocotools package: {INSTALL_HINT}") from None
    return mask


def coco_from_dict(dataset: dict[str, Any]) -> Any:
    """A `pycocotools.coco.COCO` index over an already loaded (and checked) annotation dict, built quietly."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ConfigError(f"COCO datasets need the pycocotools package: {INSTALL_HINT}") from None
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index... index created!"
        coco.createIndex()
    return coco
