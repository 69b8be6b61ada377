"""Tune a Keras model trained with MultiWorkerMirroredStrategy: 2 TensorFlow workers per trial.

Each trial's workers get ``TF_CONFIG`` exactly as a Kubeflow TFJob sets it, so the training
function creates ``tf.distribute.MultiWorkerMirroredStrategy()`` with no arguments, as it would
in a cluster. The model and optimizer are Keras'; the loop is a custom one, because Keras 3's
``fit`` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585). Every worker
reports each epoch (the same early-stopping decision reaches both); worker 0 checkpoints.

    python examples/tensorflow_multiworker.py [--trials 4]
"""

from __future__ import annotations

import argparse
from typing import Any

import hypersweep as hs

SPACE = {
    "lr": hs.loguniform(1e-2, 5e-1),
    "hidden": hs.choice([32, 64]),
    "batch_size": 64,  # global: split between the workers
    "epochs": 10,
}


def train_multiworker(config: dict[str, Any]) -> dict[str, float]:
    """One worker of a trial: join the cluster from TF_CONFIG, train, report, checkpoint."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    import keras

    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        (features / 16.0).astype("float32"),
        labels.astype("int32"),
        test_size=0.25,
        random_state=0,
        stratify=labels,
    )
    global_batch = config["batch_size"]
    steps = len(x_train) // global_batch

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(config["hidden"], activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        optimizer = keras.optimizers.SGD(config["lr"], momentum=0.9)
        optimizer.build(model.trainable_variables)
    state = hs.restore()  # the same checkpoint on every worker; None on a first attempt
    start, best = 0, 0.0
    if state is not None:
        model.set_weights(state["weights"])
        start, best = state["epoch"] + 1, state["best"]

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((x_train, y_train))
        data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        data = data.shuffle(len(x_train), seed=0).repeat()
        return data.batch(context.get_per_replica_batch_size(global_batch))

    iterator = iter(strategy.distribute_datasets_from_function(dataset))
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    # A step is compiled without AutoGraph, which cannot read the source of a function shipped
    # from a script's __main__ to the workers; the loop over steps stays in Python.
    @tf.function(autograph=False)
    def train_step() -> Any:
        def step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                per_example = cross_entropy(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            gradients = tape.gradient(loss, model.trainable_variables)
            # Keras' optimizer all-reduces the gradients across the workers.
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss

        return strategy.reduce("sum", strategy.run(step, args=next(iterator)), axis=None)

    accuracy = 0.0
    for epoch in range(start, config["epochs"]):
        for _ in range(steps):
            train_step()
        # Every worker holds the same weights: evaluating locally gives the same accuracy.
        predicted = np.argmax(model(x_val, training=False), axis=1)
        accuracy = float(np.mean(predicted == y_val))
        best = max(best, accuracy)
        hs.checkpoint({"weights": model.get_weights(), "epoch": epoch, "best": best}, step=epoch)
        hs.report(epoch, accuracy=accuracy)
    return {"accuracy": best, "final_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    result = hs.tune(
        SPACE,
        train_multiworker,
        metric="accuracy",
        mode="max",
        n_trials=args.trials,
        early_stopping="median",
        replicas=hs.Replicas(n=2, framework="tensorflow", env={"TF_CPP_MIN_LOG_LEVEL": "2"}),
        seed=0,
        name="tensorflow-multiworker",
        resume=True,
    )
    print(f"\n{result.counts()}")
    if result.best_trial is not None:
        print(f"best accuracy {result.best_value:.4f} with {result.best_config}")


if __name__ == "__main__":
    main()
