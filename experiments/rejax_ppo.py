"""rejax's PPO (PureJaxRL's design: the whole run compiled end to end with JAX) with our PPO's settings.

Run by ``experiments/bench_ppo.py --rejax-python PY`` in its own environment, since rejax 0.1.3 needs
``gymnax<1.0`` (this repository's main environment has gymnax 1.x)::

    python -m venv --system-site-packages /tmp/rejax-venv
    /tmp/rejax-venv/bin/pip install "rejax==0.1.3" "gymnax<1.0"
    /tmp/rejax-venv/bin/python experiments/rejax_ppo.py '{"num_seeds": 10}'

Takes one JSON object of settings (see ``DEFAULTS``), prints one JSON object: ``compile_s`` (tracing +
XLA compilation of the jitted train function, timed on its own), ``train_s`` (running it, synchronized),
``env_steps`` per seed and each seed's final ``eval_return_mean`` (rejax's own evaluation: 128 episodes
of the deterministic policy, once, at the end). rejax 0.1.3 has no learning-rate annealing, so its
learning rate stays at ``learning_rate`` where ours decays linearly to 0.
"""

from __future__ import annotations

import json
import sys
import time

DEFAULTS = {
    "seed": 0,
    "num_seeds": 1,
    "total_timesteps": 106_496,  # our 100k budget rounded up to whole iterations of 128 x 64
    "num_envs": 128,
    "num_steps": 64,
    "num_epochs": 2,
    "num_minibatches": 8,
    "learning_rate": 2e-3,
    "gamma": 0.99,
    "gae_lambda": 0.98,
    "clip_eps": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
}


def main(settings: dict) -> dict:
    import jax
    from rejax import PPO

    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"rejax_ppo.py: expected settings among {sorted(DEFAULTS)}, got {unknown}")
    s = {**DEFAULTS, **settings}
    algo = PPO.create(
        env="CartPole-v1",
        **{k: s[k] for k in DEFAULTS if k not in ("seed", "num_seeds")},
        eval_freq=s["total_timesteps"],  # one evaluation, at the end (as our runs with eval_every=0)
        skip_initial_evaluation=True,
        normalize_observations=True,
        agent_kwargs={"hidden_layer_sizes": (64, 64), "activation": "tanh"},
    )
    keys = jax.random.split(jax.random.PRNGKey(s["seed"]), s["num_seeds"])
    train = jax.jit(jax.vmap(algo.train))
    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, (_lengths, returns) = jax.block_until_ready(compiled(keys))
    train_s = time.perf_counter() - t0
    final = returns.reshape(s["num_seeds"], returns.shape[1], -1)[:, -1].mean(-1)
    return {
        "compile_s": compile_s,
        "train_s": train_s,
        "num_seeds": s["num_seeds"],
        "env_steps": s["total_timesteps"],
        "eval_return_mean": [float(x) for x in final],
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "settings": s,
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})))
