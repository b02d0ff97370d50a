"""The fake images' prompts for the CLIP score (given, embedded in the images, or from manifest.jsonl)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..embedded import embedded_prompt, manifest_prompts
from .images import ImageRecord, ImageSets
from .options import Options

__all__ = ["attach_prompts", "prompt_from_info", "prompted_images"]


def prompt_from_info(info: Mapping) -> str | None:
    """The prompt embedded in an image's text metadata (Pillow's ``image.info``): the ``prompt`` of the
    ``fouriscale`` JSON chunk, else the prompt part of an AUTOMATIC1111 ``parameters`` chunk, else ``None``
    (:func:`fouriscale.embedded.embedded_prompt`)."""
    found = embedded_prompt(info)
    return found.prompt if found is not None else None


def attach_prompts(records: list[ImageRecord], infos: list[dict], prompts) -> None:
    """Fill ``record.prompt`` from ``prompts`` (dict by file name/path, or callable(path)), else the embedded
    settings, else ``manifest.jsonl`` in the image's folder."""
    manifests: dict[Path, dict[str, str]] = {}
    for record, info in zip(records, infos):
        prompt, source = None, None
        if prompts is not None:
            if callable(prompts):
                prompt = prompts(record.path)
            else:
                prompt = prompts.get(record.path.name, prompts.get(str(record.path)))
            source = "given"
        else:
            prompt = prompt_from_info(info)
            source = "embedded"
            if not prompt:
                folder = record.path.parent
                if folder not in manifests:
                    manifests[folder] = manifest_prompts(folder)
                prompt = manifests[folder].get(record.path.name)
                source = "manifest"
        if isinstance(prompt, str) and prompt.strip():
            record.prompt, record.prompt_source = prompt, source


def prompted_images(images: ImageSets, options: Options, notes: list[str]) -> list[ImageRecord]:
    """The fake images the CLIP score is computed on (those with a prompt; none when CLIP is not asked for).
    Without any prompt: ``ValueError`` if CLIP was asked for explicitly, else a note and no CLIP score."""
    if "clip" not in options.groups:
        return []
    attach_prompts(images.fake, images.fake_infos, options.prompts)
    prompted = [r for r in images.fake if r.prompt]
    if not prompted:
        if options.explicit:
            raise ValueError(
                "CLIP score asked for but no fake image has a prompt (embedded settings, manifest.jsonl or "
                "prompts=); give the prompts or leave clip out of the metrics"
            )
        notes.append("clip_score skipped: no prompts (none embedded in the images, no manifest.jsonl, none given)")
    elif len(prompted) < len(images.fake):
        notes.append(
            f"clip_score over {len(prompted)} of {len(images.fake)} fake images "
            f"({len(images.fake) - len(prompted)} have no prompt)"
        )
    return prompted
