"""Data: sources (where images come from), transforms (clean and noised), loaders (batches)."""
from .loaders import (EpochSampler, LabeledDataset, PseudoDataset, collate_skip_bad, eval_batches,
                      EpochLoader, seed_for)
from .memory import CacheTooLarge, cache_budget, cache_if_fits
from .decode import BadImage, open_image
from .formats import IMAGE_EXTENSIONS
from .sources import (ArraySource, FileSource, Source, create_source, draw_per_class, max_side_for,
                      register_source)
from .manifest import ManifestSource        # registers the `manifest` kind
from .streaming import TarSource            # registers the `tar` kind
from .transforms import TrainTransform, create_train_transform, default_mean_std, to_tensor_batch

__all__ = [
    "EpochSampler", "LabeledDataset", "PseudoDataset", "collate_skip_bad", "eval_batches", "EpochLoader",
    "seed_for", "IMAGE_EXTENSIONS", "ArraySource", "BadImage", "CacheTooLarge", "cache_budget", "cache_if_fits",
    "FileSource", "Source", "create_source",
    "draw_per_class", "max_side_for", "open_image", "register_source", "TrainTransform", "create_train_transform",
    "default_mean_std", "to_tensor_batch", "ManifestSource", "TarSource",
]
