"""Counter-based random numbers for batched environments.

Every random number is a pure function of ``(key_i, counter_i, stream, lane)``: ``key_i`` is
derived from the reset seed and the env index, ``counter_i`` counts the env's own ``step``/``reset``
calls. Env ``i``'s randomness therefore does not depend on ``num_envs`` or on the device, and no
generator object carries hidden state, so a rollout replays identically inside a captured CUDA graph.

The mixer is the 32-bit ``lowbias32`` integer hash (C. Wellons' hash-prospector, constants
``0x21f0aaad`` / ``0x735a2d97``). All values are kept in ``[0, 2**32)`` inside int64 tensors and both
multipliers are below ``2**31``, so no product overflows int64 and right shifts are logical: the same
bits on every backend.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2**32 / phi: decorrelates consecutive inputs


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 avalanche hash of int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def seed_keys(seeds: torch.Tensor, env_index: torch.Tensor) -> torch.Tensor:
    """Per-env 32-bit keys from 64-bit seeds and env indices: ``mix(mix(seed_hi) ^ seed_lo + mix(i))``."""
    lo = seeds & _MASK32
    hi = (seeds >> 32) & _MASK32
    return mix32(mix32(mix32(hi + _GOLDEN) ^ lo) + mix32(env_index * 2 + 1))


def random_bits(key: torch.Tensor, counter: torch.Tensor, stream: int, lanes: int) -> torch.Tensor:
    """32-bit random integers, shape ``(num_envs, lanes)``, for one (stream, counter) of each env."""
    lane = torch.arange(lanes, device=key.device, dtype=torch.int64)
    base = mix32(key ^ mix32(counter * 0x2545F491 + stream * _GOLDEN))  # (N,)
    return mix32(base.unsqueeze(-1) + mix32(lane * 0x6C8E9CF5 + 1))


def uniform(
    key: torch.Tensor, counter: torch.Tensor, stream: int, lanes: int, dtype: torch.dtype
) -> torch.Tensor:
    """Uniform floats in ``[0, 1)``, shape ``(num_envs, lanes)``.

    float32 uses the top 24 bits (exactly representable, never rounds up to 1.0); float64 joins two
    hashes for 53 bits.
    """
    return _to_unit(random_bits(key, counter, stream, lanes), dtype)


def _to_unit(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float64:
        extra = mix32(bits ^ 0x5BD1E995)
        mant = (bits >> 11) * (1 << 32) + extra  # 21 + 32 = 53 bits
        return mant.to(torch.float64) * (2.0**-53)
    return (bits >> 8).to(dtype) * (2.0**-24)


class Draw:
    """Per-env random numbers for one (stream, counter) of every env; each call takes fresh lanes.

    The base class hands one to ``_sample_reset`` and one to ``_transition``; row ``i`` of every draw
    depends only on env ``i``'s key and counter.

    Args:
        key: int64 ``(N,)`` per-env keys (`seed_keys`).
        counter: int64 ``(N,)`` per-env counters.
        stream: which stream (reset or step) the draws belong to.
        dtype: float dtype of `uniform`.

    >>> keys = seed_keys(torch.zeros(3, dtype=torch.int64), torch.arange(3))
    >>> d = Draw(keys, torch.zeros(3, dtype=torch.int64), 0, torch.float32)
    >>> d.uniform(2, -1.0, 1.0).shape
    torch.Size([3, 2])
    """

    def __init__(self, key: torch.Tensor, counter: torch.Tensor, stream: int, dtype: torch.dtype):
        self.key, self.counter, self.stream, self.dtype = key, counter, stream, dtype
        self._used = 0

    def uniform(self, lanes: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """``(N, lanes)`` uniforms in ``[low, high)``: ``low + (high - low) * u``."""
        u = uniform(self.key, self.counter, self.stream * 1024 + self._used, lanes, self.dtype)
        self._used += 1
        return low + (high - low) * u if (low, high) != (0.0, 1.0) else u

    def integers(self, high: int | torch.Tensor, lanes: int = 1) -> torch.Tensor:
        """``(N, lanes)`` int64 in ``[0, high)``, by the exact method ``floor(u * high)`` on 53/24-bit u."""
        u = uniform(self.key, self.counter, self.stream * 1024 + self._used, lanes, torch.float64)
        self._used += 1
        return torch.minimum((u * high).floor().to(torch.int64), torch.as_tensor(high) - 1)
