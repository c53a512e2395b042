"""Networks and fitting: the CNN and backbones, BatchNorm statistics, training and two-stage fine-tuning, KerasTuner
search, the feature cache, Grad-CAM.
"""
