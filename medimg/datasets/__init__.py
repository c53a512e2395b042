"""Datasets: layouts and manifests, splits, the scan report and its warnings, dataset sources, the decode cache, the
tf.data pipeline, augmentation, a run's prepared data.
"""
