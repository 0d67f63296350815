"""Counter-based random numbers for batched environments: Philox-4x32-10, in int64 tensors.

Every random number is a pure function of ``(seed_i, index_i, counter_i, stream, draw, lane)``:

- ``seed_i`` (64 bits) is the reset seed of env ``i`` and is Philox's 64-bit key, unchanged: two
  seeds in ``[0, 2**64)`` never share a key (``s`` and ``s + 2**32`` differ, ``2**63`` differs from 0).
- ``index_i`` (40 bits) is env ``i``'s stream index: ``i`` itself unless the reset passes
  ``options={"env_index": idx}``, so that one batch can hold the envs of several runs.
- ``counter_i`` (64 bits) counts env ``i``'s own ``step`` / ``reset`` calls.
- ``stream`` (reset or step, 4 bits), ``draw`` (the how-manieth draw of the hook, 10 bits) and the
  lane block (10 bits) tell apart the numbers of one call.

The 128-bit Philox counter is ``(counter_lo, counter_hi, index_lo, index_hi << 24 | stream << 20 |
draw << 10 | block)`` and the key is ``(seed_lo, seed_hi)``. For one key Philox is a bijection of the
counter, so under one seed no two (env, call, block) ever get the same 128 output bits, however many
envs and resets there are (the former 32-bit key hash repeated whole reset draws at 65,536 envs x 64
resets); different seeds are different keys. Env ``i``'s randomness does not depend on ``num_envs``,
and no generator object carries hidden state, so a rollout replays identically inside a captured CUDA
graph and under ``torch.compile``.

Philox-4x32-10 is the generator of Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy
as 1, 2, 3" (SC 2011; Random123, also JAX's and cuRAND's): ten rounds of two 32x32->64-bit
multiplies, checked here against Random123's known-answer vectors. Every 32-bit word is held in an
int64 tensor and every intermediate stays below ``2**63`` (the 32x32 multiply is split so that no
product overflows, see `_mulhilo`), and right shifts act on non-negative values: the same bits on
every backend, eager or compiled, with no reliance on integer overflow. Eager on CPU the same
arithmetic runs in NumPy ``uint64`` (exact 64-bit products, five array ops a round instead of ten),
which keeps the eager step as fast as the former hash; the two paths are tested bit for bit. Compiled on
CPU, Philox runs on four separate 1-D words (`_philox_words`), a form inductor vectorizes: a compiled
step computes a reset draw for every env at every step (branch-free), and the pair form's unvectorized
loop made that half of the compiled CartPole step. The words are columns of the env's ``(N, 4)`` key
and ``(N, 2)`` counter, which `TorchVectorEnv` stores column-major for this reason: read from row-major
buffers (stride 4 and 2) the same loop stays scalar (the compiled CartPole step at 4096 envs took 1.45x
as long, one thread).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
# Philox-4x32 round multipliers and Weyl key increments (Random123's PHILOX_M4x32_*, PHILOX_W32_*).
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10

SEED_BITS = 64
INDEX_BITS = 40
_STREAM_BITS, _DRAW_BITS, _BLOCK_BITS = 4, 10, 10
_SUB_BITS = _STREAM_BITS + _DRAW_BITS + _BLOCK_BITS  # 24: the low bits of counter word 3
MAX_STREAMS, MAX_DRAWS, MAX_BLOCKS = 1 << _STREAM_BITS, 1 << _DRAW_BITS, 1 << _BLOCK_BITS


def _mulhilo(x: torch.Tensor, m_minus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` 32-bit halves of ``x * m`` for ``x < 2**32`` and ``m = 2**31 + m_minus``.

    With ``q = x * m_minus < 2**63`` (``m_minus < 2**31``): ``x * m = q + x * 2**31``, so
    ``hi = floor((floor(q / 2) + x * 2**30) / 2**31)`` (both terms below ``2**62``) and, as adding
    ``2**31`` modulo ``2**32`` only flips bit 31, ``lo = (q ^ (x << 31)) mod 2**32``.
    """
    q = x * m_minus
    hi = torch.add(q >> 1, x, alpha=1 << 30) >> 31
    lo = (q ^ (x << 31)) & _MASK32
    return hi, lo


def _eager_cpu(t: torch.Tensor) -> bool:
    """Whether ``t``'s numbers may come from the NumPy path (eager CPU; never while tracing)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _device_pair(a: int, b: int, device: torch.device) -> torch.Tensor:
    """int64 ``(a, b)`` on ``device``.

    Eager, it is made by kernels alone: ``torch.tensor(..., device=cuda)`` copies from the host, which a
    CUDA graph capture refuses (and would replay from freed memory if it did not). Under ``torch.compile``
    it is a graph constant: inductor folds ``arange * (b - a) + a`` into Triton index arithmetic, which is
    int32 and overflows on these 32-bit constants (seen on an H200, torch 2.11)."""
    if torch.compiler.is_compiling():
        return torch.tensor([a, b], device=device)
    return torch.arange(2, device=device) * (b - a) + a


def _philox_pairs_torch(e: torch.Tensor, o: torch.Tensor, k: torch.Tensor, rounds: int) -> torch.Tensor:
    """Philox-4x32 on words held in pairs: ``e = (c0, c2)``, ``o = (c1, c3)``, ``k = (k0, k1)``, each
    ``(2, *S)`` (broadcast); returns int64 ``(*S, 4)``. In int64 tensor ops: the same code on every
    backend and under ``torch.compile`` (hence inside CUDA graphs).

    Each round multiplies the swapped pair ``(c2, c0)`` by ``(M1, M0)``, which leaves the low halves in
    the order of the next round's ``(c1, c3)``: one flip per round is all the word shuffling there is.
    """
    ones = [1] * (max(e.dim(), o.dim(), k.dim()) - 1)
    dev = e.device
    m_swapped = _device_pair(PHILOX_M[1] - 2**31, PHILOX_M[0] - 2**31, dev).view(2, *ones)
    bumps = torch.arange(rounds, device=dev).unsqueeze(1) * _device_pair(*PHILOX_W, dev)  # (rounds, 2)
    round_keys = (k.unsqueeze(0) + bumps.view(rounds, 2, *ones)) & _MASK32
    for r in range(rounds):
        hi, lo = _mulhilo(e.flip(0), m_swapped)  # (hi(M1 c2), hi(M0 c0)), (lo(M1 c2), lo(M0 c0))
        e, o = hi ^ o ^ round_keys[r], lo
    e, o = torch.broadcast_tensors(e, o)
    return torch.stack((e[0], o[0], e[1], o[1]), -1)


def _philox_words(
    c: tuple[torch.Tensor, ...], k: tuple[torch.Tensor, torch.Tensor], rounds: int
) -> tuple[torch.Tensor, ...]:
    """`_philox_pairs_torch` on four separate 1-D words, constants as Python ints (CPU only).

    Compiled on CPU, inductor vectorizes this form (one SIMD loop over rows; the pair layout's inner
    loop of length 2 with row-dependent constants it does not): the compiled step's reset draw for every
    env costs a fraction of what it did. Bitwise equal to `_philox_pairs_torch` (tested). On CUDA the
    pair form stays (its constants are built for graph capture, see `_device_pair`).
    """
    c0, c1, c2, c3 = c
    k0, k1 = k
    m0, m1 = PHILOX_M[0] - 2**31, PHILOX_M[1] - 2**31
    for r in range(rounds):
        hi0, lo0 = _mulhilo(c0, m0)
        hi1, lo1 = _mulhilo(c2, m1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r + 1 < rounds:
            k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
    return c0, c1, c2, c3


def _bits_words(key: torch.Tensor, counter: torch.Tensor, sub: int) -> torch.Tensor:
    """One Philox block per row, ``(N, 4)``, by `_philox_words` (the counter layout of `random_bits`)."""
    c = (counter[:, 0], counter[:, 1], key[:, 2], (key[:, 3] << _SUB_BITS) | sub)
    return torch.stack(_philox_words(c, (key[:, 0], key[:, 1]), PHILOX_ROUNDS), -1)


@functools.lru_cache(maxsize=4)
def _numpy_constants(rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M1, M0)`` shaped ``(2, 1)``; the key bumps ``r * (W0, W1)``, shaped ``(rounds, 2, 1)``."""
    m_swapped = np.array([[PHILOX_M[1]], [PHILOX_M[0]]], dtype=np.uint64)
    bumps = np.array([[[r * PHILOX_W[0]], [r * PHILOX_W[1]]] for r in range(rounds)], dtype=np.uint64)
    return m_swapped, bumps


def _philox_numpy(e: np.ndarray, o: np.ndarray, k: np.ndarray, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """`_philox_pairs_torch` for eager CPU tensors, on C-contiguous ``uint64`` ``(2, M)`` arrays (``k`` may be
    ``(2, 1)``); returns the final ``(e, o)``.

    A product of two 32-bit words is below ``2**64``, so in ``uint64`` it is exact (no overflow, no
    limbs) and a round takes five array ops instead of ten; NumPy's per-op cost is also a fraction of
    eager torch's. Philox is a hundred-odd tensor ops, so this is what keeps the eager env step about
    as fast as the former 32-bit hash. Bitwise equal to `_philox_pairs_torch` (tested).
    """
    m_swapped, bumps = _numpy_constants(rounds)
    shift, mask = np.uint64(32), np.uint64(_MASK32)
    for r in range(rounds):
        # ``o`` may carry bits above 32 (the product's high half, left unmasked to save an op); they
        # are cleared here, before ``e`` is multiplied again, and in the final ``o``.
        p = e[::-1] * m_swapped  # exact 64-bit products (M1 c2, M0 c0)
        e, o = ((p >> shift) ^ o ^ (k + bumps[r])) & mask, p
    return e, o & mask


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = PHILOX_ROUNDS) -> torch.Tensor:
    """Philox-4x32 (Salmon et al. 2011) of int64 tensors holding 32-bit words.

    One round maps ``(c0, c1, c2, c3)`` with key ``(k0, k1)`` to
    ``(hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0))``, and the key is bumped by
    ``(W0, W1)`` modulo ``2**32`` between rounds.

    Args:
        counter: int64 ``(..., 4)``, words in ``[0, 2**32)``.
        key: int64 ``(..., 2)``, words in ``[0, 2**32)``; broadcast against ``counter``.
        rounds: 10 for Philox-4x32-10 (the standard, Crush-resistant choice).

    Returns:
        int64 ``(..., 4)``: four random 32-bit words per counter.

    >>> z = torch.zeros(4, dtype=torch.int64)
    >>> [f"{w:08x}" for w in philox4x32(z, z[:2]).tolist()]
    ['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']
    """
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError(
            f"philox4x32: expected counter (..., 4) and key (..., 2), got {tuple(counter.shape)} and "
            f"{tuple(key.shape)}"
        )
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise ValueError(f"philox4x32: expected int64 words, got {counter.dtype} and {key.dtype}")
    shape = torch.broadcast_shapes(counter.shape[:-1], key.shape[:-1])
    c = counter.expand(*shape, 4).movedim(-1, 0)
    k = key.expand(*shape, 2).movedim(-1, 0)
    e, o = c[0::2], c[1::2]
    if not _eager_cpu(e):
        return _philox_pairs_torch(e, o, k, rounds)
    # Eager on CPU: the same bits from `_philox_numpy` (exact uint64 products, fewer ops).
    en, on, kn = (
        np.ascontiguousarray(np.broadcast_to(t.numpy(), (2, *shape)), dtype=np.uint64).reshape(2, -1)
        for t in (e, o, k)
    )
    en, on = _philox_numpy(en, on, kn, rounds)
    out = np.stack((en[0], on[0], en[1], on[1]), -1).astype(np.int64)
    return torch.from_numpy(out.reshape(*shape, 4))


def seed_words(seeds: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` 32-bit words ``(lo, hi)`` of non-negative int64 ``seeds`` (``< 2**63``)."""
    return torch.stack((seeds & _MASK32, (seeds >> 32) & _MASK32), -1)


def seed_keys(seeds: torch.Tensor, env_index: torch.Tensor) -> torch.Tensor:
    """Per-env stream keys ``(seed_lo, seed_hi, index_lo, index_hi)``, int64 ``(N, 4)``.

    Args:
        seeds: int64 ``(N, 2)`` seed words ``(lo, hi)`` (a seed in ``[0, 2**64)``), or int64 ``(N,)``
            non-negative seeds (below ``2**63``).
        env_index: int64 ``(N,)`` stream indices in ``[0, 2**40)``.

    The map is injective: distinct ``(seed, env_index)`` pairs give distinct keys.
    """
    words = seed_words(seeds) if seeds.dim() == 1 else seeds
    return torch.cat((words, seed_words(env_index)), -1)


def increment(counter: torch.Tensor, by: torch.Tensor | int = 1) -> None:
    """Add ``by`` (0 or 1 per env, or an int in ``[0, 2**32)``) to 64-bit ``(lo, hi)`` counters, in place.

    Modulo ``2**64``, carrying from the low word into the high one without any int64 overflow.
    """
    if _eager_cpu(counter):  # the same arithmetic in NumPy, in place: a third of the op cost
        c = counter.numpy()
        lo = c[:, 0] + (by.numpy() if isinstance(by, torch.Tensor) else by)
        c[:, 1] = (c[:, 1] + (lo >> 32)) & _MASK32
        c[:, 0] = lo & _MASK32
        return
    lo = counter[:, 0] + by
    counter[:, 1].copy_((counter[:, 1] + (lo >> 32)) & _MASK32)
    counter[:, 0].copy_(lo & _MASK32)


def random_bits(
    key: torch.Tensor,
    counter: torch.Tensor,
    stream: int,
    draw: int,
    words: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``words`` random 32-bit integers per env, int64 ``(N, words)``, for one (stream, draw) of each env.

    Args:
        key: int64 ``(N, 4)`` stream keys (`seed_keys`).
        counter: int64 ``(N, 2)`` 64-bit counters ``(lo, hi)``.
        stream: which stream (reset or step), in ``[0, 16)``.
        draw: which draw of the call, in ``[0, 1024)``.
        words: how many words (``<= 4096``): Philox blocks of 4 words, the last one sliced.
        rows: int64 indices of the only rows whose numbers are needed (the others come back 0), or
            None for all. Row ``i``'s words are the same either way.
    """
    n = key.shape[0]
    blocks = -(-words // 4)
    if not 0 <= stream < MAX_STREAMS or not 0 <= draw < MAX_DRAWS or not 1 <= blocks <= MAX_BLOCKS:
        raise ValueError(
            f"random_bits: expected stream in [0, {MAX_STREAMS}), draw in [0, {MAX_DRAWS}) and 1 to "
            f"{4 * MAX_BLOCKS} words, got stream={stream}, draw={draw}, words={words}"
        )
    sub = (stream << (_DRAW_BITS + _BLOCK_BITS)) | (draw << _BLOCK_BITS)
    if _eager_cpu(key):
        return _random_bits_numpy(key, counter, sub, blocks, words, rows)
    if rows is not None:
        key, counter = key.index_select(0, rows), counter.index_select(0, rows)
    bits = _bits_torch(key, counter, sub, blocks, words)
    if rows is None:
        return bits
    return bits.new_zeros(n, words).index_copy_(0, rows, bits)


def _bits_torch(key: torch.Tensor, counter: torch.Tensor, sub: int, blocks: int, words: int) -> torch.Tensor:
    """`random_bits` of every row, in int64 torch ops (any backend, eager or compiled)."""
    if key.device.type == "cpu" and blocks == 1:
        return _bits_words(key, counter, sub)[:, :words]
    # Counter words (c0, c2) = (counter_lo, index_lo) and (c1, c3) = (counter_hi, index_hi | sub | block),
    # built directly in Philox's pair layout; shapes (2, N, 1) and (2, N, blocks).
    word3 = (key[:, 3:4] << _SUB_BITS) | sub
    if blocks > 1:
        word3 = word3 + torch.arange(blocks, device=key.device, dtype=torch.int64)
    e = torch.stack((counter[:, 0:1], key[:, 2:3]))
    o = torch.stack((counter[:, 1:2].expand_as(word3), word3))
    out = _philox_pairs_torch(e, o, key[:, 0:2].t().unsqueeze(-1), PHILOX_ROUNDS)  # (N, blocks, 4)
    return out.reshape(out.shape[0], 4 * blocks)[:, :words]


def _random_bits_numpy(
    key: torch.Tensor, counter: torch.Tensor, sub: int, blocks: int, words: int, rows: torch.Tensor | None
) -> torch.Tensor:
    """`random_bits` on eager CPU tensors: the same counter layout, built and run in NumPy."""
    u64 = np.uint64
    kn, cn = key.numpy(), counter.numpy()
    if rows is not None:
        rn = rows.numpy()
        kn, cn = kn[rn], cn[rn]
    m = kn.shape[0]
    kn, cn = kn.astype(u64), cn.astype(u64)
    e = np.stack((cn[:, 0], kn[:, 2]))
    o = np.stack((cn[:, 1], (kn[:, 3] << u64(_SUB_BITS)) | u64(sub)))
    k = np.ascontiguousarray(kn[:, :2].T)
    if m > 1 and bool((k == k[:, :1]).all()):
        k = k[:, :1]  # one seed for all rows (the usual case): the round keys are two scalars
    if blocks > 1:  # rows of (m, blocks), flattened
        e, o = (np.repeat(a, blocks, axis=1) for a in (e, o))
        k = np.repeat(k, blocks, axis=1) if k.shape[1] > 1 else k
        o[1] += np.tile(np.arange(blocks, dtype=u64), m)
    e, o = _philox_numpy(e, o, k, PHILOX_ROUNDS)
    bits = np.stack((e[0], o[0], e[1], o[1]), -1).reshape(m, 4 * blocks)[:, :words].astype(np.int64)
    if rows is not None:
        full = np.zeros((key.shape[0], words), dtype=np.int64)
        full[rn] = bits
        bits = full
    return torch.from_numpy(bits)


def uniform(
    key: torch.Tensor,
    counter: torch.Tensor,
    stream: int,
    draw: int,
    lanes: int,
    dtype: torch.dtype,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform floats in ``[0, 1)``, shape ``(N, lanes)``, for one (stream, draw) of each env.

    float32 uses the top 24 bits of one word (exactly representable, never rounds up to 1.0); float64
    joins 21 bits of one word and 32 of another for 53 bits. ``rows``: see `random_bits`.
    """
    words = 2 * lanes if dtype == torch.float64 else lanes
    return bits_to_uniform(random_bits(key, counter, stream, draw, words, rows), dtype)


def bits_to_uniform(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`uniform` of given words: ``(N, lanes)`` floats of ``(N, lanes)`` words (float32) or of
    ``(N, 2 * lanes)`` words (float64)."""
    if dtype == torch.float64:
        lanes = bits.shape[1] // 2
        mant = torch.add(bits[:, lanes:], bits[:, :lanes] >> 11, alpha=1 << 32)  # 21 + 32 = 53 bits
        return mant.to(torch.float64) * (2.0**-53)
    return (bits >> 8).to(dtype) * (2.0**-24)


class Draw:
    """Per-env random numbers for one (stream, counter) of every env; each call takes a fresh draw.

    The base class hands one to ``_sample_reset`` and one to ``_transition``; row ``i`` of every draw
    depends only on env ``i``'s key and counter. Up to 1024 calls per draw, 4096 words per call.

    Args:
        key: int64 ``(N, 4)`` per-env stream keys (`seed_keys`).
        counter: int64 ``(N, 2)`` per-env 64-bit counters.
        stream: which stream (reset or step) the draws belong to.
        dtype: float dtype of `uniform`.
        rows: int64 indices of the only rows whose numbers the caller keeps (the base class passes the
            envs being reset, on the eager CPU path), or None for all. The other rows get zeros, so a
            hook's output in those rows is a valid but meaningless value that the caller discards.

    >>> keys = seed_keys(torch.zeros(3, dtype=torch.int64), torch.arange(3))
    >>> d = Draw(keys, torch.zeros(3, 2, dtype=torch.int64), 0, torch.float32)
    >>> d.uniform(2, -1.0, 1.0).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        key: torch.Tensor,
        counter: torch.Tensor,
        stream: int,
        dtype: torch.dtype,
        rows: torch.Tensor | None = None,
    ):
        self.key, self.counter, self.stream, self.dtype, self.rows = key, counter, stream, dtype, rows
        self._used = 0

    def words(self, words: int) -> torch.Tensor:
        """The next draw's ``(N, words)`` random 32-bit words (`random_bits`)."""
        out = random_bits(self.key, self.counter, self.stream, self._used, words, self.rows)
        self._used += 1
        return out

    def uniform(self, lanes: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """``(N, lanes)`` uniforms in ``[low, high)``: ``low + (high - low) * u``."""
        u = bits_to_uniform(self.words(2 * lanes if self.dtype == torch.float64 else lanes), self.dtype)
        return low + (high - low) * u if (low, high) != (0.0, 1.0) else u

    def integers(self, high: int | torch.Tensor, lanes: int = 1) -> torch.Tensor:
        """``(N, lanes)`` int64 in ``[0, high)``, by the exact method ``floor(u * high)`` on 53-bit u."""
        u = bits_to_uniform(self.words(2 * lanes), torch.float64)
        return torch.minimum((u * high).floor().to(torch.int64), torch.as_tensor(high) - 1)
