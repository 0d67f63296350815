"""A module that registers a Gymnasium id when imported, as ``gymnasium_robotics`` does.

``tests/test_gymnasium_training.py`` makes ``"_registers_an_id_on_import:RegisteredOnImport-v0"`` (the
``module:EnvId`` form) through `envs.make` and ``experiments/train.py``. The module is not imported
anywhere else, so the id exists only if the ``module:`` prefix is honoured.
"""

import gymnasium as gym

ENV_ID = "RegisteredOnImport-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
        max_episode_steps=50,
    )
