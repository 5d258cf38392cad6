"""The data layer: any folder of images -> clean examples + a report of what was not used.

Flow: ``sources`` (folder, split folders, CSV, arrays) -> ``scanning`` (decode-check
each file once, cached) -> ``splits`` (leak removal, stratified validation) ->
``report`` (dataset-level verdict) -> ``transforms`` + ``loaders`` (tensors).
See docs/data.md.
"""

from .build import DatasetSplits, Example, check_data, load_data
from .cache import cache_root
from .datasets import DATASETS, WrittenDataset, write_dataset
from .images import IMAGE_EXTENSIONS, open_image, to_channels
from .loaders import ImageDataset, create_loader, default_workers
from .report import DataPolicy, DataReport, render_text
from .scanning import ScanOptions
from .transforms import AugmentConfig, ImageTransform, create_transform

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "DataPolicy",
    "DataReport",
    "DatasetSplits",
    "Example",
    "ImageDataset",
    "ImageTransform",
    "ScanOptions",
    "WrittenDataset",
    "cache_root",
    "check_data",
    "create_loader",
    "create_transform",
    "default_workers",
    "load_data",
    "open_image",
    "render_text",
    "to_channels",
    "write_dataset",
]
