"""Whether an image is unlike a run's training images: a small PCA profile of gray thumbnails, model-agnostic.

The profile is the classic reconstruction-error novelty detector (the Q statistic or squared prediction error of
PCA process monitoring, Jackson & Mudholkar 1979; Hoffmann 2007, "Kernel PCA for novelty detection", uses its
kernel form): principal components of the training images' thumbnails span what those images look like, and an
image they cannot reconstruct is of another kind. It looks at the pixels only, so it serves every model a run may
keep (a trained CNN, a pretrained backbone, a search's ensemble) alike, and it costs a second or two per run.

It catches gross mismatches (another modality, a test pattern, another body part); it is not a test of subtle
shift, and a smooth picture that the components happen to reconstruct (a plain gradient) can pass it. Blank and
flat images are the case the reconstruction error misses most plainly (a black image is the mean minus itself,
largely inside the components' span), so the profile also keeps the range of the training and validation
thumbnails' brightness (mean gray level) and the range of their contrast (standard deviation of the gray model
input at its own resolution: a thumbnail averages a fine pattern such as a checkerboard into flat gray), widened by
MARGIN, and an image outside them is cautioned for that. It also keeps how many of a sample of the training files
carry colour, so that a colour picture given to a model trained on gray ones is named as unlike them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from medimg.errors import ConfigError

THUMBNAIL_SIZE = 16  # px a side: global layout and brightness, not detail; 256 values per image
VARIANCE_KEPT = 0.95  # the components kept explain this share of the training thumbnails' variance
MAX_IMAGES = 2000  # per split; enough for 256-value thumbnails, and reading them stays in seconds on big datasets
# The note fires beyond MARGIN × the largest validation distance. The largest of n validation images is exceeded
# by 1 in n + 1 new images of the same kind (exchangeability, as in split-conformal p-values, Vovk et al. 2005),
# which on the 30 validation images of the bundled demo would caution ~3% of ordinary X-rays. Measured there: the
# test split's largest distance was 1.14× the validation maximum; DICOM test patterns, MR and ultrasound images were
# 1.5–3×.
MARGIN = 1.25
PROFILE_FILE = "image_profile.json"  # in the run directory
MEANING = " the call may mean nothing"  # ends a note that says the probability cannot be trusted


@dataclasses.dataclass(frozen=True)
class ImageProfile:
    """Mean and principal components of a training split's gray thumbnails, and the distance beyond which an
    image is unlike them (set on the validation split)."""

    thumbnail_size: int
    mean: np.ndarray  # (T*T,) gray levels 0..255
    components: np.ndarray  # (K, T*T), orthonormal rows
    validation_max: float  # the largest distance of a validation image
    threshold: float  # MARGIN × validation_max
    counts: dict[str, int]  # images the profile was fitted on ("train") and calibrated on ("val")
    # Allowed thumbnail brightness (lowest, highest mean gray level) and lowest contrast (standard deviation, gray
    # levels); None in profiles written before they were kept, which then skip those checks.
    brightness: tuple[float, float] | None = None
    min_contrast: float | None = None  # of the thumbnails: profiles written before `contrast`, checked only there
    # Allowed contrast of the gray model input at full resolution (lowest, highest standard deviation, gray levels).
    contrast: tuple[float, float] | None = None
    # (files carrying colour, files looked at) in a sample of the training files; None when not looked at.
    colour_files: tuple[int, int] | None = None

    def distances(self, images: np.ndarray) -> np.ndarray:
        """Reconstruction error of each image: the root mean square, in gray levels (0..255), of what the
        components cannot reconstruct of its thumbnail.

        Args:
            images: N×H×W×C or H×W×C uint8 model inputs (gray or RGB), any size.

        Returns:
            (N,) float distances (a single image gives shape (1,)).
        """
        return self._residual_rms(thumbnails(images, self.thumbnail_size))

    def _residual_rms(self, rows: np.ndarray) -> np.ndarray:
        centred = rows - self.mean
        residual = centred - (centred @ self.components.T) @ self.components
        return np.sqrt(np.mean(residual**2, axis=1))

    def note(self, image: np.ndarray) -> str:
        """Why one model input (H×W×C uint8) is unlike the training images, or "" when it is within the profile."""
        row = thumbnails(image, self.thumbnail_size)[0]  # once, for the distance and the contrast / brightness
        distance = float(self._residual_rms(row[None])[0])
        if distance > self.threshold:
            return (
                f"unlike the training images (distance {distance:.1f} vs at most {self.validation_max:.1f} for the "
                "validation images): the call may mean nothing"
            )
        if self.contrast is not None or self.min_contrast is not None:
            if self.contrast is not None:
                contrast, (lowest, highest) = float(_gray(image).std()), self.contrast
            else:
                contrast, lowest, highest = float(row.std()), float(self.min_contrast or 0.0), float("inf")
            if contrast < lowest:
                return (
                    f"nearly uniform (contrast {contrast:.1f} gray levels; the training and validation images have "
                    f"at least {lowest * MARGIN:.1f}): blank or flat, the call may mean nothing"
                )
            if contrast > highest:
                return (
                    f"unlike the training images (contrast {contrast:.1f} gray levels; the training and validation "
                    f"images have at most {highest / MARGIN:.1f}): the call may mean nothing"
                )
            low, high = self.brightness or (0.0, 255.0)
            if not low <= row.mean() <= high:
                return (
                    f"unlike the training images (mean brightness {row.mean():.0f} of 255, outside the "
                    f"{low:.0f}–{high:.0f} they span with a margin): the call may mean nothing"
                )
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "PCA reconstruction error of gray thumbnails (RMS, gray levels 0..255)",
            "thumbnail_size": self.thumbnail_size,
            "mean": np.round(self.mean, 4).tolist(),
            "components": np.round(self.components, 6).tolist(),
            "validation_max": self.validation_max,
            "margin": MARGIN,
            "threshold": self.threshold,
            "counts": dict(self.counts),
            "brightness": list(self.brightness) if self.brightness else None,
            "min_contrast": self.min_contrast,
            "contrast": list(self.contrast) if self.contrast else None,
            "colour_files": list(self.colour_files) if self.colour_files else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProfile:
        """The profile `to_dict` wrote. Raises ConfigError when a field is missing or malformed."""
        try:
            size = int(data["thumbnail_size"])
            mean = np.asarray(data["mean"], np.float64).reshape(size * size)
            components = np.asarray(data["components"], np.float64).reshape(-1, size * size)
            brightness = data.get("brightness")
            contrast = data.get("min_contrast")
            full_contrast, colour = data.get("contrast"), data.get("colour_files")
            return cls(
                size,
                mean,
                components,
                float(data["validation_max"]),
                float(data["threshold"]),
                data["counts"],
                (float(brightness[0]), float(brightness[1])) if brightness else None,
                float(contrast) if contrast is not None else None,
                (float(full_contrast[0]), float(full_contrast[1])) if full_contrast else None,
                (int(colour[0]), int(colour[1])) if colour else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ConfigError(f"image profile is malformed ({error}); retrain the run to write it again.") from error


def _gray(image: np.ndarray) -> np.ndarray:
    """H×W×C uint8 (C 1 or 3) → H×W uint8 gray (OpenCV RGB2GRAY)."""
    import cv2

    return image[..., 0] if image.shape[-1] == 1 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """N×H×W×C (or H×W×C) uint8 images → N×(size²) float gray thumbnails (OpenCV RGB2GRAY, INTER_AREA)."""
    import cv2

    batch = images[None] if images.ndim == 3 else images
    rows = [cv2.resize(_gray(image), (size, size), interpolation=cv2.INTER_AREA).reshape(-1) for image in batch]
    return np.asarray(rows, np.float64).reshape(len(batch), size * size)


def fit_profile(
    train: np.ndarray, validation: np.ndarray, seed: int = 0, colour_files: tuple[int, int] | None = None
) -> ImageProfile:
    """Fit the profile on training images and set its threshold on validation images (never on test).

    The brightness range is the training and validation thumbnails' lowest to highest mean gray level, widened on
    each side by (MARGIN − 1) × its width; the contrast range is their gray model inputs' smallest standard
    deviation / MARGIN to largest × MARGIN, at full resolution.

    The threshold is MARGIN × the largest validation distance, not a percentile: validation splits here are small
    (tens of images), where a 99th percentile is the maximum or an interpolation next to it, and the maximum means
    no validation image would be cautioned. The margin (see MARGIN) keeps ordinary unseen images of the same kind,
    which exceed that maximum now and then, from being cautioned.

    Args:
        train: N×H×W×C uint8, the training split's cached model inputs (a seeded sample of MAX_IMAGES if more).
        validation: M×H×W×C uint8, the validation split's (likewise sampled).
        seed: the sample's seed.
        colour_files: (files carrying colour, files looked at) in a sample of the training files, kept as it is.

    Raises:
        ConfigError: fewer than 2 training images or no validation image.
    """
    if len(train) < 2 or len(validation) < 1:
        raise ConfigError(
            f"an image profile needs 2 or more training images and a validation image; got {len(train)} and "
            f"{len(validation)}."
        )
    size = min(THUMBNAIL_SIZE, int(train.shape[1]))
    train = _sample(train, seed)
    rows = thumbnails(train, size)
    mean = rows.mean(axis=0)
    _, singular, vectors = np.linalg.svd(rows - mean, full_matrices=False)
    explained = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-12)
    kept = int(np.searchsorted(explained, VARIANCE_KEPT)) + 1
    profile = ImageProfile(size, mean, vectors[:kept], 0.0, 0.0, {"train": len(rows)})
    sampled = _sample(validation, seed)
    validation_max = float(profile.distances(sampled).max())
    seen = np.concatenate([rows, thumbnails(sampled, size)])
    means = seen.mean(axis=1)
    widen = (MARGIN - 1) * float(means.max() - means.min())
    contrasts = [float(_gray(image).std()) for split in (train, sampled) for image in split]
    return dataclasses.replace(
        profile,
        validation_max=validation_max,
        threshold=MARGIN * validation_max,
        counts={"train": len(rows), "val": len(sampled)},
        brightness=(max(0.0, float(means.min()) - widen), min(255.0, float(means.max()) + widen)),
        contrast=(min(contrasts) / MARGIN, max(contrasts) * MARGIN),
        colour_files=colour_files,
    )


def _sample(images: np.ndarray, seed: int) -> np.ndarray:
    if len(images) <= MAX_IMAGES:
        return np.asarray(images)
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), MAX_IMAGES, replace=False))
    return np.asarray(images[chosen])  # sorted: a memory map is read forwards


def input_note(source: str | Path | bytes, pixels: np.ndarray | None, color: str, profile: ImageProfile | None) -> str:
    """Why one input is unlike what a model trained on `color` ("gray" or "rgb") images with this image `profile`
    saw, or "" (`Predictor.input_note` says which checks; the exported prediction scripts call this too).

    `source`: the file as given (path or bytes), read again only to tell whether it carries colour; `pixels`: the
    model input (S×S×C uint8) or None; `profile`: None for runs saved before profiles were written."""
    notes = [_colour_note(source, color, profile)]
    if pixels is not None and profile is not None:
        notes.append(profile.note(pixels))
    notes = [note for note in notes if note]
    # Said once, at the end, when both notes would say it.
    notes[:-1] = [note.removesuffix(", and" + MEANING).removesuffix(":" + MEANING) for note in notes[:-1]]
    return "; ".join(notes)


def _colour_note(source: str | Path | bytes, color: str, profile: ImageProfile | None) -> str:
    from medimg.imaging import images

    try:
        colour = images.carries_colour(source)
    except Exception:  # read already for the prediction; a second failure only means no note
        return ""
    if colour and color == "gray":
        counted = profile.colour_files if profile else None
        if counted and counted[0] == 0:
            return (
                f"unlike the training images (a colour image; none of {counted[1]} sampled training files carries "
                "colour): the model sees it converted to gray, and" + MEANING
            )
        return "a colour image, and this model was trained on gray images: it sees it converted to gray"
    if not colour and color == "rgb":
        return "a gray image, and this model was trained on colour images"
    return ""
