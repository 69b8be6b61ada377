"""Tune a JAX MLP trained data-parallel across 2 JAX processes per trial (CPU, gloo).

Each trial's processes get the coordinator address, process count and process id as Kubeflow's
JAXJob and JAX runtime set them, so the training function calls ``jax.distributed.initialize()``
with no arguments, as it would in a cluster. The global batch is one array sharded over every
process's devices; ``jax.jit`` inserts the cross-process gradient reduction itself. Every
process reports each epoch (the same early-stopping decision reaches all of them); process 0
checkpoints the parameters as numpy arrays, and a restarted gang resumes from them.

    python examples/jax_multiprocess.py [--trials 4]
"""

from __future__ import annotations

import argparse
from typing import Any

import hypersweep as hs

SPACE = {
    "lr": hs.loguniform(0.1, 1.0),
    "hidden": hs.choice([32, 64]),
    "batch_size": 64,  # global: split between the processes
    "epochs": 8,
}


def train_data_parallel(config: dict[str, Any]) -> dict[str, float]:
    """One JAX process of a trial: join the job, train on its shard of each batch, report."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    jax.distributed.initialize()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        (features / 16.0).astype("float32"), labels, test_size=0.25, random_state=0
    )
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    processes, me = jax.process_count(), jax.process_index()
    per_process = config["batch_size"] // processes

    def init(key: Any) -> dict[str, Any]:
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (64, config["hidden"])) * 0.1,
            "b1": jnp.zeros(config["hidden"]),
            "w2": jax.random.normal(k2, (config["hidden"], 10)) * 0.1,
            "b2": jnp.zeros(10),
        }

    def logits(params: dict[str, Any], x: Any) -> Any:
        return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

    def loss_fn(params: dict[str, Any], x: Any, y: Any) -> Any:
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, x)), y[:, None], 1))

    @jax.jit
    def step(params: dict[str, Any], x: Any, y: Any) -> dict[str, Any]:
        # x and y are sharded across processes: the mean (and so the gradient) spans them all.
        grads = jax.grad(loss_fn)(params, x, y)
        return jax.tree.map(lambda p, g: p - config["lr"] * g, params, grads)

    state = hs.restore()  # the same numpy checkpoint in every process; None on a first attempt
    start, best = 0, 0.0
    params = init(jax.random.key(0))
    if state is not None:
        params = {name: jnp.asarray(value) for name, value in state["params"].items()}
        start, best = state["epoch"] + 1, state["best"]
    params = jax.device_put(params, replicated)

    accuracy = 0.0
    steps = len(x_train) // config["batch_size"]
    for epoch in range(start, config["epochs"]):
        order = np.random.default_rng(epoch).permutation(len(x_train))
        for batch in range(steps):
            rows = order[batch * config["batch_size"] :][me * per_process :][:per_process]
            x = jax.make_array_from_process_local_data(batch_sharding, x_train[rows])
            y = jax.make_array_from_process_local_data(batch_sharding, y_train[rows])
            params = step(params, x, y)
        # The parameters are replicated: every process evaluates the same model locally.
        local = {name: np.asarray(value.addressable_data(0)) for name, value in params.items()}
        predicted = np.argmax(logits(local, x_val), axis=1)
        accuracy = float(np.mean(predicted == y_val))
        best = max(best, accuracy)
        hs.checkpoint({"params": local, "epoch": epoch, "best": best}, step=epoch)
        hs.report(epoch, accuracy=accuracy)
    return {"accuracy": best, "final_accuracy": accuracy}


def main(trials: int = 4, epochs: int = 8, name: str = "jax-multiprocess") -> hs.SweepResult:
    return hs.tune(
        {**SPACE, "epochs": epochs},
        train_data_parallel,
        metric="accuracy",
        mode="max",
        n_trials=trials,
        early_stopping="median",
        replicas=hs.Replicas(n=2, framework="jax"),
        seed=0,
        name=name,
        resume=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    result = main(parser.parse_args().trials)
    print(f"\n{result.counts()}")
    if result.best_trial is not None:
        print(f"best accuracy {result.best_value:.4f} with {result.best_config}")
