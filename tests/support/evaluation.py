"""Helpers of the image-quality tests (not a test module): seeded image sets, a small seeded conv net that stands
in for Inception (``--feature-extractor support.evaluation:tiny_feature_net`` on the command line), and short
ways to run the evaluation and its command."""

import argparse
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from fouriscale.evaluation import evaluate_with_report
from fouriscale.frontend.cli.quality import add_eval_arguments

N_IMAGES = 32
SIZE = 96


class TinyFeatureNet(torch.nn.Module):
    """Seeded random two-layer conv net; features: per-channel mean and std of the second layer (x10)."""

    input_size = 64

    def __init__(self, seed: int = 0, width: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(16, width, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5)
                conv.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.conv1(x * 2 - 1))
        h = torch.relu(self.conv2(h))
        return 10 * torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)


def tiny_feature_net():
    """Factory for ``--feature-extractor support.evaluation:tiny_feature_net``."""
    return TinyFeatureNet()


class Recorder(torch.nn.Module):
    """Feature net that keeps a copy of every batch it sees."""

    input_size = 64
    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyFeatureNet()
        self.calls = []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return self.net(x)


class ColourLogits(torch.nn.Module):
    """'Classifier' over the three colour channels: near one-hot logits for pure red, green or blue images."""

    input_size = 16
    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append((x.dtype, float(x.min()), float(x.max()), tuple(x.shape[-2:])))
        return 40 * x.mean(dim=(2, 3))


def smooth_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Random images with structure at three scales (coarse blobs to fine texture)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        acc = np.zeros((size, size, 3))
        for res, amp in ((4, 1.0), (12, 0.6), (48, 0.4)):
            small = Image.fromarray((rng.random((res, res, 3)) * 255).astype(np.uint8))
            acc += amp * (
                np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255 - 0.5
            )
        out.append((np.clip(0.5 + 0.8 * acc, 0, 1) * 255).astype(np.uint8))
    return out


def write_png(path: Path, array: np.ndarray, chunks: dict | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in (chunks or {}).items():
        info.add_itxt(key, value)
    Image.fromarray(array).save(path, pnginfo=info)
    return path


def derive(src: Path, dst: Path, fn) -> Path:
    dst.mkdir()
    for path in sorted(src.iterdir()):
        with Image.open(path) as image:
            fn(image.convert("RGB")).save(dst / path.name)
    return dst


def shift_right(image: Image.Image, px: int = 16) -> Image.Image:
    a = np.asarray(image)
    b = np.zeros_like(a)
    b[:, px:] = a[:, :-px]
    return Image.fromarray(b)


def run(real, fake, **kw):
    kw.setdefault("feature_extractor", TinyFeatureNet())
    kw.setdefault("metrics", ["fid", "kid", "is"])
    return evaluate_with_report(real, fake, **kw)


PROMPTS = ["a red cat", "blue sky, clouds", "an old house", "green grass"]


def clip_reference(path: str, arrays, prompts) -> float:
    """100 x mean cosine similarity computed directly with transformers, clamped at 0 like torchmetrics."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)

    def tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        pixels = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]
        image = tensor(model.get_image_features(pixel_values=pixels))
        tokens = processor.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = tensor(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    return max(100 * float(cos.mean()), 0.0)


def clip_run(clip_sets, folder, tiny_clip, **kw):
    return evaluate_with_report(clip_sets["real"], clip_sets[folder], clip_model=tiny_clip, metrics=["clip"], **kw)


def parse(*argv):
    parser = argparse.ArgumentParser(prog="fouriscale eval")
    add_eval_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def tiny_folder(root: Path, name: str, n: int, size=(64, 64)) -> Path:
    folder = root / name
    folder.mkdir()
    for i, array in enumerate(smooth_images(n, max(size), seed=20)):
        write_png(folder / f"{i:02d}.png", array[: size[1], : size[0]])
    return folder


def guard_network(monkeypatch) -> list:
    """Make every socket connection fail loudly; returns the list of attempted addresses."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
