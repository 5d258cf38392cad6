"""Keras backbones: small Keras models built in the tests, saved as
``.keras`` and ``.h5``; tiny images.

These tests need Keras 3 (``pip install 'transferkit[keras]'``, part of the dev
extra). Without it they fail, naming the extra; only with Keras absent *and*
``TRANSFERKIT_KERAS_TESTS=0`` are they skipped.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from transferkit.backbones.keras_loader import import_keras

HERE = Path(__file__).resolve().parent
SKIP_REASON = "Keras 3 is not installed and TRANSFERKIT_KERAS_TESTS=0"


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("keras") is not None:
        return
    if os.environ.get("TRANSFERKIT_KERAS_TESTS") != "0":
        return  # the `keras` fixture fails with the install hint
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def keras():
    return import_keras("running the Keras backbone tests")


def build_convnet(keras, size: int = 16, classes: int = 2):
    """Conv/BN stem, a residual block, a strided conv, Flatten, Dense and a softmax
    classifier, every layer named (as in the classic Keras tutorial's ``flatten_1`` cut)."""
    L = keras.layers
    inp = keras.Input((size, size, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Activation("relu", name="relu1")(x)
    y = L.Conv2D(4, 3, padding="same", name="conv2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.Add(name="add")([x, y])
    x = L.Activation("relu", name="relu2")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", name="conv3")(x)
    x = L.BatchNormalization(name="bn3")(x)
    x = L.Activation("relu", name="relu3")(x)
    x = L.Flatten(name="flatten_1")(x)
    x = L.Dense(8, activation="relu", name="dense_1")(x)
    out = L.Dense(classes, activation="softmax", name="dense_out")(x)
    return keras.Model(inp, out, name="convnet")


@pytest.fixture(scope="session")
def keras_files(keras, tmp_path_factory):
    """The same trained-looking model saved as ``.keras`` and legacy ``.h5``, and
    its weights as numpy arrays by layer."""
    keras.utils.set_random_seed(0)
    model = build_convnet(keras)
    folder = tmp_path_factory.mktemp("keras_models")
    # Non-trivial BN statistics, as a trained model would have.
    for layer in model.layers:
        if "BatchNormalization" in type(layer).__name__:
            layer.moving_mean.assign(keras.random.uniform(layer.moving_mean.shape, seed=1))
            layer.moving_variance.assign(
                keras.random.uniform(layer.moving_variance.shape, 0.5, 2.0, seed=2)
            )
    model.save(folder / "convnet.keras")
    model.save(folder / "convnet.h5")
    weights = {
        layer.name: [w.numpy().copy() for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }
    return {"keras": folder / "convnet.keras", "h5": folder / "convnet.h5", "weights": weights}


@pytest.fixture
def make_convnet(keras):
    def make(**kwargs):
        keras.utils.set_random_seed(0)
        return build_convnet(keras, **kwargs)

    return make
