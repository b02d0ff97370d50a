"""The real then the fake images decoded ``batch_size`` at a time and fed to the metrics, so memory does
not grow with the number of images."""

from __future__ import annotations

import torch

from .images import Batch, ImageRecord, ImageSets, decode_batch
from .metrics import Metrics
from .options import Options

__all__ = ["stream_batches"]


def stream_batches(meters: Metrics, images: ImageSets, options: Options) -> None:
    """Feed every image to ``meters``, real first, with a tqdm bar on stderr when ``options.progress``; the
    networks' cached outputs are dropped at the end."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(images.real) + len(images.fake), desc="evaluating", unit="img", disable=not options.progress)
    try:
        with torch.no_grad():
            for is_real, records in ((True, images.real), (False, images.fake)):
                for start in range(0, len(records), options.batch_size):
                    chunk = records[start : start + options.batch_size]
                    meters.update(_decode(chunk, is_real, meters, options), is_real)
                    bar.update(len(chunk))
    finally:
        bar.close()
        meters.networks.clear()


def _decode(chunk: list[ImageRecord], is_real: bool, meters: Metrics, options: Options) -> Batch:
    """The pixels of ``chunk`` that ``meters`` use: whole images for FID/KID/IS, crops for FID_c/KID_c, prompted
    fake images for CLIP."""
    return decode_batch(
        chunk,
        "real" if is_real else "fake",
        meters.networks.size,
        wholes=options.need_features,
        crops=options.crops if meters.networks.features is not None else 0,
        crop_size=options.crop_size,
        seed=options.seed,
        clip=meters.clip is not None and not is_real,
    )
