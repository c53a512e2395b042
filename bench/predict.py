"""Prediction: one image (decode + preprocess + predict + Grad-CAM) with medimg's `Predictor` vs naive Keras, and
batch throughput over many files.

A run is trained first (one tiny epoch on the real data) in a temporary runs folder. Then, after a warm-up:
- single image, per call: `Predictor.predict([(name, path)])` + `Predictor.gradcam` vs the naive way
  (`cv2.imread` + resize, `model.predict(x)` per image, the same `explain.gradcam_heatmap`), interleaved image by
  image; p50/p95 and the split into decode / predict / Grad-CAM (target: naive p50 / medimg p50 ≥ 3);
- prototype rows (bench-only code): the Grad-CAM model built once and the gradient step in a `tf.function`, and
  also the forward pass in a `tf.function`, to show what those changes to `medimg.model.explain` /
  `medimg.results.predict` would give (results checked equal to medimg's);
- batch: `Predictor.predict` on a list of N files (default 1,000 synthetic) vs a naive `model.predict` per file
  and vs one `model.predict` on the stacked batch; decode alone, sequential vs two threads.

    python bench/predict.py [--quick] [--calls 100] [--batch 1000]
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import numpy as np
import synth

TARGET = 3.0


def train_run(data: Path, image_size: int, color: str, work: Path):
    """A trained run (one epoch, no callbacks that stop early) to predict with."""
    from medimg import jobs
    from medimg.config import DatasetConfig, RunSpec, TrainConfig
    from medimg.store import runs

    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(data), image_size=image_size, color=color),
        train=TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0),
    )
    run = runs.create_run(spec, work / "runs")
    jobs.execute(run)
    return run


def medimg_call(predictor, path: str, gradcam) -> dict[str, float]:
    """Phase seconds of one file through the Predictor: decode + predict, then Grad-CAM."""
    predict_s, results = common.timed(predictor.predict, [(path, path)])
    gradcam_s, _ = common.timed(gradcam, results[0].image)
    return {"decode+predict": predict_s, "gradcam": gradcam_s}


def naive_call(model, path: str, size: int, color: str) -> dict[str, float]:
    """Phase seconds the naive way: cv2.imread + resize, model.predict on one image, the same Grad-CAM."""
    from medimg.model import explain

    decode_s, image = common.timed(common.seed_read, path, size, color)
    predict_s, _ = common.timed(lambda: model.predict(image[np.newaxis].astype(np.float32), verbose=0))
    gradcam_s, _ = common.timed(explain.gradcam_heatmap, model, image)
    return {"decode+predict": decode_s + predict_s, "gradcam": gradcam_s}


def compiled_gradcam(model):
    """Prototype: the Grad-CAM model built once and its gradient step traced once (the maths of
    medimg.model.explain)."""
    import cv2
    import keras
    import tensorflow as tf

    from medimg.model import explain

    layer = model.get_layer(explain.last_conv_layer_name(model))
    grad_model = keras.Model(model.inputs, [layer.output, model.outputs[0]])

    @tf.function(reduce_retracing=True)
    def cam(batch):
        with tf.GradientTape() as tape:
            feature_maps, output = grad_model(batch, training=False)
            probs = tf.concat([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output
            score = tf.gather(probs[0], tf.argmax(probs[0]))
        weights = tf.reduce_mean(tape.gradient(score, feature_maps), axis=(0, 1, 2))
        return tf.nn.relu(tf.reduce_sum(feature_maps[0] * weights, axis=-1))

    def heatmap(image: np.ndarray) -> np.ndarray:
        values = cam(tf.convert_to_tensor(image[np.newaxis].astype(np.float32))).numpy()
        values = values / values.max() if values.max() > 0 else values
        size = (image.shape[1], image.shape[0])
        return np.clip(cv2.resize(values.astype(np.float32), size, interpolation=cv2.INTER_LINEAR), 0, 1)

    return heatmap


def compiled_forward(model):
    """Prototype: `Predictor.predict_images` with the forward pass traced once (graph mode: fused oneDNN kernels)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
    forward = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])

    def predict_images(batch: np.ndarray) -> np.ndarray:
        chunks = [forward(np.asarray(batch[i : i + 256], dtype=np.float32)).numpy() for i in range(0, len(batch), 256)]
        output = np.concatenate(chunks)
        return np.concatenate([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output

    return predict_images


def fast_predictor(run, reference):
    """A second Predictor on the same run whose forward pass is compiled; checked against the reference."""
    from medimg.results.predict import Predictor

    fast = Predictor(run)
    fast.predict_images = compiled_forward(fast.model)
    shape = (8, reference.size, reference.size, 1 if reference.color == "gray" else 3)
    sample = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    assert np.allclose(fast.predict_images(sample), reference.predict_images(sample), atol=1e-5), "forward differs"
    return fast


def single_image(predictor, fast, paths: list[str], args) -> dict[str, list[dict[str, float]]]:
    """Per-call phase times of the four ways, interleaved file by file after `args.warmup` untimed rounds."""
    prototype = compiled_gradcam(predictor.model)
    ways = {
        "medimg Predictor + gradcam": lambda p: medimg_call(predictor, p, predictor.gradcam),
        "naive model.predict + same Grad-CAM": lambda p: naive_call(
            predictor.model, p, predictor.size, predictor.color
        ),
        "prototype: Predictor + compiled Grad-CAM": lambda p: medimg_call(predictor, p, prototype),
        "prototype: + compiled forward too": lambda p: medimg_call(fast, p, prototype),
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    for index in range(args.warmup + args.calls):
        path = paths[index % len(paths)]
        for name, way in ways.items():
            phases = way(path)
            if index >= args.warmup:
                times[name].append(phases)
    check = np.abs(prototype(predictor.prepare(paths[0])) - predictor.gradcam(predictor.prepare(paths[0]))).max()
    print(f"prototype Grad-CAM vs medimg.model.explain: max |difference| {check:.2e}")
    return times


def report_single(times: dict[str, list[dict[str, float]]]) -> None:
    totals = {name: [1000 * sum(p.values()) for p in calls] for name, calls in times.items()}
    base = common.median(totals["medimg Predictor + gradcam"])
    rows = []
    for name, calls in times.items():
        phases = [common.median([1000 * p[k] for p in calls]) for k in ("decode+predict", "gradcam")]
        p50, p95 = common.median(totals[name]), common.percentile(totals[name], 95)
        rows.append([name, *phases, p50, p95, common.ratio(p50, base)])
    headers = ["way", "decode+predict p50 ms", "Grad-CAM p50 ms", "total p50 ms", "total p95 ms", "this / medimg"]
    common.print_table(f"single image, {len(next(iter(times.values())))} calls each", headers, rows)
    naive = common.median(totals["naive model.predict + same Grad-CAM"])
    print(f"\nsingle-image target (naive p50 / medimg p50): {common.verdict(naive / base, TARGET)}")


def batch(predictor, fast, paths: list[str]) -> None:
    """Files per second for N files: Predictor.predict, naive per-file predict, naive one batch; decode alone."""
    model, size, color = predictor.model, predictor.size, predictor.color
    decode = lambda p: common.seed_read(p, size, color)
    with ThreadPoolExecutor(max_workers=2) as pool:
        ways = {
            "Predictor.predict(list of files)": lambda: predictor.predict([(p, p) for p in paths]),
            "prototype: Predictor, compiled forward": lambda: fast.predict([(p, p) for p in paths]),
            "naive: model.predict per file": lambda: [
                model.predict(decode(p)[np.newaxis].astype(np.float32), verbose=0) for p in paths
            ],
            "naive: cv2 loop + one model.predict": lambda: model.predict(
                np.stack([decode(p) for p in paths]).astype(np.float32), batch_size=256, verbose=0
            ),
            "decode only: Predictor.prepare loop": lambda: [predictor.prepare(p) for p in paths],
            "decode only: Predictor.prepare, 2 threads": lambda: list(pool.map(predictor.prepare, paths)),
        }
        seconds = {name: common.timed(way)[0] for name, way in ways.items()}
    base = seconds["Predictor.predict(list of files)"]
    rows = [[name, s, f"{len(paths) / s:.0f}", common.ratio(s, base)] for name, s in seconds.items()]
    common.print_table(f"batch of {len(paths)} files", ["way", "seconds", "files/s", "time / Predictor"], rows)


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--color", choices=["gray", "rgb"], default="gray")
    parser.add_argument("--calls", type=int, default=100, help="timed single-image calls per way")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000, help="files for the batch throughput")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs for the batch")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.warmup, args.batch = 30, 5, 300
    threads = common.configure_threads(args.intra, args.inter)
    work = Path(tempfile.mkdtemp(prefix="predict-", dir=common.bench_home()))
    try:
        from medimg.results.predict import Predictor

        run = train_run(args.data, args.image_size, args.color, work)
        predictor = Predictor(run)
        fast = fast_predictor(run, predictor)
        print(f"# predict: {args.image_size} px {args.color}, {threads}")
        test = common.class_folder_files(args.data / "test" if (args.data / "test").is_dir() else args.data)[0]
        report_single(single_image(predictor, fast, test, args))
        files = common.class_folder_files(synth.synthesize(args.batch, args.size, args.data))[0]
        batch(predictor, fast, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
