"""What a dataset's class and split counts mean for training, in words: the one rule the scan and training share.

The scan report and a run's start both call these functions on counts of readable images, so what the scan warns
about is exactly what training then does (a class with no readable image is left out with a notice; a validation
split holding one class makes validation AUC, the operating point and calibration undefined).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def unusable_classes(listed: Mapping[str, int], readable: Mapping[str, int], empty: Iterable[str] = ()) -> list[str]:
    """Class names that training leaves out: folders holding no image file (`empty`) and classes whose every
    listed file is unreadable (`listed[c] > 0`, `readable.get(c, 0) == 0`). Sorted, each name once."""
    return sorted({*empty, *(name for name, count in listed.items() if count and not readable.get(name, 0))})


def class_warnings(listed: Mapping[str, int], readable: Mapping[str, int], empty: Iterable[str] = ()) -> list[str]:
    """One warning per class that training leaves out, saying why (no image file, or only unreadable ones)."""
    warnings = []
    for name in unusable_classes(listed, readable, empty):
        count = listed.get(name, 0)
        why = "holds no image file" if not count else f"holds only unreadable files ({count})"
        warnings.append(f"class folder '{name}' {why}: left out of training (the model will not know this class).")
    return warnings


def one_class_reason(counts: Mapping[str, int]) -> str | None:
    """Why a split's figures that need two classes (AUC, Youden's J, sensitivity targets, temperature scaling)
    are undefined on it, or None when at least two classes have images. `counts`: readable images per class."""
    present = [name for name, count in counts.items() if count]
    if len(present) >= 2 or not present:
        return None
    return f"it holds only '{present[0]}' images ({counts[present[0]]})"


def split_warnings(splits: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Warnings about the validation and test splits' class make-up; `splits`: split → class → readable images."""
    warnings = []
    if "train" in splits:
        every = {name for counts in splits.values() for name, count in counts.items() if count}
        untrained = sorted(name for name in every if not splits["train"].get(name))
        if untrained:
            warnings.append(
                f"class {', '.join(repr(n) for n in untrained)} has readable images but none in train/: training "
                "stops before it starts; move some of them into train/."
            )
    val = one_class_reason(splits.get("val", {}))
    if val:
        warnings.append(
            f"The validation split has one class: {val}. Validation AUC is undefined (one class), so the search "
            "and early stopping follow validation loss; the operating point (Youden's J), the sensitivity and "
            "specificity targets and temperature scaling, which need both classes, are skipped. Add images of the "
            "other classes to val/, or drop val/ to let medimg carve a stratified validation split from train/."
        )
    elif missing := absent_from(splits, "val"):
        those = "that class" if len(missing) == 1 else "those classes"
        warnings.append(
            f"The validation split has no {_names(missing)} images: the search's scores, early stopping and the saved "
            f"model's validation figures never see {those} (macro AUC averages the classes present). Add images of "
            f"{those} to val/ or, when medimg carves the split, to the dataset: a class of one or two images cannot "
            "reach every split."
        )
    test = one_class_reason(splits.get("test", {}))
    if test:
        warnings.append(f"The test split has one class: {test}. Test AUC and specificity are undefined.")
    elif missing := absent_from(splits, "test"):
        those = "that class" if len(missing) == 1 else "those classes"
        warnings.append(f"The test split has no {_names(missing)} images: no test figure speaks for {those}.")
    small = small_test_reason(splits.get("test", {}))
    if small:
        warnings.append(small)
    return warnings


def _names(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def absent_from(splits: Mapping[str, Mapping[str, int]], split: str) -> list[str]:
    """Classes with training images and none in `split`, sorted; [] when `split` holds no image at all (a split
    that medimg carves from train/ later is stratified, so it cannot miss a class)."""
    counts = splits.get(split, {})
    if not any(counts.values()):
        return []
    return sorted(name for name, count in splits.get("train", {}).items() if count and not counts.get(name))


# Below this many test images in a class, even a perfect score on it has a 95% interval reaching under about 0.72.
SMALL_TEST_CLASS = 10
Z95 = 1.959964  # the standard normal's 97.5th percentile


def small_test_reason(counts: Mapping[str, int]) -> str | None:
    """A warning when a class has fewer than `SMALL_TEST_CLASS` test images, or None. The figure quoted is the lower
    end of the Wilson 95% interval when all k images of that class are called right, k / (k + z²) (E. B. Wilson,
    JASA 22, 1927; p̂ = 1 in the score interval)."""
    present = {name: count for name, count in counts.items() if count}
    if not present:
        return None
    name, count = min(present.items(), key=lambda item: item[1])
    if count >= SMALL_TEST_CLASS:
        return None
    floor = count / (count + Z95**2)
    return (
        f"The test split has only {count} '{name}' image{'s' if count != 1 else ''} ({sum(present.values())} in "
        f"all): even if every one is called right, the 95% interval of its sensitivity reaches down to {floor:.2f}. "
        "Read the test figures as anecdotes; a larger test split (test fraction or test/ folder) makes them evidence."
    )
