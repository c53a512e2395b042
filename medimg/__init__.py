"""medimg: medical image classification, from a folder of images to a tuned, evaluated model.

Importing medimg is cheap: TensorFlow, KerasTuner and OpenCV are imported by the functions that use them.
"""

__version__ = "0.1.0"
