"""The hrl_nested environment suite: batched torch vector envs with Gymnasium semantics.

``import envs`` registers the ``hrl_nested/`` ids, so that
``gymnasium.make_vec("hrl_nested/CartPole-v1", num_envs=4096, device="cuda")`` works.
"""

from envs.adapter import supports_state
from envs.checker import check_vector_env
from envs.core import Draw, EnvState, TorchVectorEnv
from envs.registration import make, register_envs

register_envs()

__all__ = [
    "Draw",
    "EnvState",
    "TorchVectorEnv",
    "check_vector_env",
    "make",
    "register_envs",
    "supports_state",
]
