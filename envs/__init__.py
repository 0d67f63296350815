"""The hrl_nested environment suite: batched torch vector envs with Gymnasium semantics.

``import envs`` registers the ``hrl_nested/`` ids, so that
``gymnasium.make_vec("hrl_nested/CartPole-v1", num_envs=4096, device="cuda")`` works.
"""

from envs.adapter import supports_state
from envs.array_conversion import numpy_vector_env
from envs.checker import check_vector_env
from envs.core import Draw, EnvState, TorchVectorEnv
from envs.gym_env import GymEnv
from envs.options import EnvOptions
from envs.registration import make, register_envs

register_envs()


def __getattr__(name: str):
    # SB3VecEnv imports stable_baselines3 (about a second): only when it is asked for.
    if name == "SB3VecEnv":
        from envs.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


__all__ = [
    "Draw",
    "EnvOptions",
    "EnvState",
    "GymEnv",
    "SB3VecEnv",
    "TorchVectorEnv",
    "check_vector_env",
    "make",
    "numpy_vector_env",
    "register_envs",
    "supports_state",
]
