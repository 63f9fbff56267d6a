"""Images/s on one core for Pillow decode + CLIP-336 preprocessing, the Python
counterpart of bench/bench_images.c. The steps are Hugging Face CLIPImageProcessor's
(transformers.image_transforms): convert("RGB"), shortest edge -> 336 with PIL BICUBIC
(long edge int(336 * long / short)), center crop 336, float64 * (1/255) -> float32,
(x - mean) / std in float32, HWC -> CHW.

usage: python3 scripts/bench_images_pillow.py [photos_dir] [seconds]   (from the repo root)
"""
import io
import os
import sys
import time

import numpy as np
from PIL import Image

SIZE = 336
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def decode(data):
    return Image.open(io.BytesIO(data)).convert("RGB")


def clip336(image):
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(SIZE * long / short)
    size = (SIZE, new_long) if width <= height else (new_long, SIZE)
    pixels = np.asarray(image.resize(size, resample=Image.BICUBIC))
    top, left = (pixels.shape[0] - SIZE) // 2, (pixels.shape[1] - SIZE) // 2
    pixels = pixels[top:top + SIZE, left:left + SIZE]
    x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def measure(photos, step, seconds):
    for data in photos:  # warm-up
        step(data)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in photos:
            step(data)
        images += len(photos)
    return images / (time.perf_counter() - start)


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "../shared/fixtures/images/photos"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    photos = []
    for name in sorted(os.listdir(folder)):
        if not name.startswith("."):
            with open(os.path.join(folder, name), "rb") as f:
                photos.append(f.read())
    decode_rate = measure(photos, decode, seconds)
    total_rate = measure(photos, lambda data: clip336(decode(data)), seconds)
    print(f"bench_images_pillow: {len(photos)} photos from {folder}, one core, Pillow {Image.__version__}")
    print(f"decode only:                     {decode_rate:8.1f} images/s")
    print(f"decode + CLIP-336 preprocess:    {total_rate:8.1f} images/s")


if __name__ == "__main__":
    main()
