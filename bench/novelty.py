"""Predict's "unlike the training images" caution (`medimg.datasets.novelty`) on the shared real datasets: how
many of a dataset's own test images it cautions (false alarms: the profile's threshold was set on validation, so
test is where that is checked), and how many of each other dataset's test images (what it is for): every note
`ImageProfile.note` gives (distance, flatness or brightness), and how many of them the distance alone gives. A
benchmark, not a test.

    python bench/novelty.py

Each profile is fitted on its dataset's training split and calibrated on its validation split, at the size and
channel mode the automatic mode chooses there (BreastMNIST 28 px gray, RetinaMNIST 28 px RGB, the chest X-ray mini
set 64 px gray). Another dataset's test images are converted to the profile's channel mode and size (OpenCV
RGB2GRAY / GRAY2RGB, INTER_AREA), as `InputContract.load` would convert an upload.
"""

from __future__ import annotations

import numpy as np
from common import REPO

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {  # name: (folder, image size in pixels, channel mode) as `auto.plan` chooses them
    "BreastMNIST": ("breastmnist", 28, "gray"),
    "RetinaMNIST": ("retinamnist", 28, "rgb"),
    "chest X-ray mini": ("chest_xray_pneumonia_mini", 64, "gray"),
}


def as_input(images: np.ndarray, size: int, color: str) -> np.ndarray:
    """N×H×W×C uint8 → N×size×size×(1 or 3) uint8, as a contract of that size and mode would make them."""
    import cv2

    out = []
    for image in images:
        if color == "gray" and image.shape[-1] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
        elif color == "rgb" and image.shape[-1] == 1:
            image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
        out.append(image)
    return np.stack(out)


def main() -> None:
    from medimg.config import DatasetConfig
    from medimg.datasets import novelty
    from medimg.model import training

    data = {
        name: training.prepare_data(DatasetConfig(path=str(SHARED / folder), image_size=size, color=color))
        for name, (folder, size, color) in DATASETS.items()
    }
    print(
        "| profile of | validation max | threshold | "
        + " | ".join(f"{name} test cautioned" for name in DATASETS)
        + " |\n|---|---:|---:|"
        + "---:|" * len(DATASETS)
    )
    for name, prepared in data.items():
        _, size, color = DATASETS[name]
        profile = novelty.fit_profile(prepared.arrays["train"].images, prepared.arrays["val"].images)
        cells = []
        for other in data.values():
            images = as_input(np.asarray(other.arrays["test"].images), size, color)
            by_distance = int(np.sum(profile.distances(images) > profile.threshold))
            flagged = sum(bool(profile.note(image)) for image in images)  # distance, flatness or brightness
            cells.append(f"{flagged / len(images):.1%} ({flagged} of {len(images)}; {by_distance} by distance)")
        print(f"| {name} | {profile.validation_max:.1f} | {profile.threshold:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
