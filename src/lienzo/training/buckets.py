"""Aspect-ratio buckets (kohya sd-scripts' `make_bucket_resolutions`): sizes near one pixel budget, in steps
of the latent grid, so images of mixed shapes train uncropped and batch together."""

from __future__ import annotations

from PIL import Image

from lienzo.errors import InvalidArgumentError


def bucket_resolutions(resolution: int, step: int = 64) -> list[tuple[int, int]]:
    """(width, height) pairs at most `resolution`² pixels, both sides multiples of `step` from
    resolution/2 to resolution*2 (kohya's min/max bucket sizes 256 and 1024 at 512), square included."""
    if resolution < step or resolution % step:
        raise InvalidArgumentError(
            f"--resolution {resolution} must be a multiple of {step} (the bucket step) to use --buckets"
        )
    budget = resolution * resolution
    smallest, largest = max(step, resolution // 2 // step * step), resolution * 2
    sizes = {(resolution, resolution)}
    for width in range(smallest, largest + 1, step):
        height = min(largest, budget // width // step * step)
        if height >= smallest:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (kohya: smallest ratio error)."""
    width, height = size
    ratio = width / height
    return min(buckets, key=lambda bucket: (abs(bucket[0] / bucket[1] - ratio), -bucket[0] * bucket[1]))


def cover_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale (Lanczos) so the image covers `size` (width, height), then crop the centre to it."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))
