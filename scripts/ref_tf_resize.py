#!/usr/bin/env python3
"""Reference outputs of TensorFlow's tf.image.resize(method="lanczos3", antialias=True), rounded
and clipped to uint8 as OpenVLA's RLDS pipeline (Octo's dlimp) resizes its training images.

tensorflow is not in scripts/requirements-test.txt (too heavy for the test environment); this runs in
an environment of its own with tensorflow, numpy and Pillow (made with tensorflow 2.21.0, the
environment of scripts/ref_rlds.py), and its outputs are committed:

    python3 scripts/ref_tf_resize.py

Writes tests/fixtures/tf_resize/:
  noise.png            64 x 48 RGB noise (seeded)
  noise_24x20.png      downsampled (the kernel widened by 64 / 24, antialias)
  noise_80x72.png      upsampled
  noise_64x48.png      the same size (identity)
  scene.png            256 x 256 gradients and discs, LIBERO's camera size
  scene_224x224.png    OpenVLA's model size
"""
import os

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tf_resize")


def dlimp_resize(image, height, width):
    resized = tf.image.resize(image, (height, width), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def scene():
    y, x = np.mgrid[0:256, 0:256]
    pixels = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 50, 120, 130), fill=(220, 40, 40))
    draw.ellipse((150, 140, 230, 220), fill=(40, 190, 60))
    draw.rectangle((20, 180, 90, 240), fill=(250, 250, 250))
    return np.asarray(image)


def main():
    os.makedirs(OUT, exist_ok=True)
    noise = np.random.default_rng(7).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(os.path.join(OUT, "noise.png"))
    for height, width in ((20, 24), (72, 80), (48, 64)):
        Image.fromarray(dlimp_resize(noise, height, width)).save(os.path.join(OUT, f"noise_{width}x{height}.png"))
    picture = scene()
    Image.fromarray(picture).save(os.path.join(OUT, "scene.png"))
    Image.fromarray(dlimp_resize(picture, 224, 224)).save(os.path.join(OUT, "scene_224x224.png"))


if __name__ == "__main__":
    main()
