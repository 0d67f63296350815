"""The capture's warm-up-and-rewind, on CPU, and its CUDA calls scoped to the env's device (issue 8).

- "Tests that can fail": the warm-up-and-rewind logic (`Collector._warm_up`) used to run only inside
  the skipped CUDA tests. The ``"static"`` mode now runs it on its first call, so on CPU: after a
  warm-up and a rewind, the next rollout equals a rollout from a fresh identical setup.
- Item 7: with ``--device cuda:1`` the side stream, the graph and the RNG state must be those of cuda:1,
  not of the current device. Without a GPU, the torch.cuda calls are replaced by recorders that check
  the device each one is given or runs under; the genuine CUDA tests are marked ``cuda``.
"""

import contextlib

import pytest
import torch

import envs
from hrl_nested.networks import ActorCritic, params_of
from hrl_nested.rollout import actor_critic_policy, make_rollout

N, T = 8, 24


def _setup(
    env_id="hrl_nested/CartPole-v1", capture="none", device="cpu", squash="auto", seed=0, validate=False
):
    env = envs.make(
        env_id, N, device=device, autoreset_mode="same_step", validate=validate, max_episode_steps=10
    )
    torch.manual_seed(seed)
    agent = ActorCritic(env.single_observation_space, env.single_action_space, squash=squash).to(env.device)
    collect = make_rollout(env, actor_critic_policy(agent), T, capture=capture)
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(100 + seed)  # the policy's sampling stream
    return env, agent, collect, obs


def _leaves(res):
    b = res.batch
    return [b.obs, b.actions, b.logprobs, b.values, b.rewards, b.next_obs, b.terminated, b.truncated, res.obs,
            res.episode_return_sum, res.episode_length_sum, res.episode_count]  # fmt: skip


def _assert_same(r1, r2):
    for x, y in zip(_leaves(r1), _leaves(r2)):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "env_id, squash", [("hrl_nested/CartPole-v1", "auto"), ("hrl_nested/Pendulum-v1", "tanh")]
)
def test_static_first_call_warms_up_and_rewinds_to_a_fresh_rollout(env_id, squash, monkeypatch):
    _, agent, eager, obs = _setup(env_id, "none", squash=squash)
    reference = [eager(params_of(agent), obs)]
    reference.append(eager(params_of(agent), reference[0].obs))
    assert reference[0].episode_count > 0  # episodes end inside the rollout: the accumulators matter

    env, agent, static, obs = _setup(env_id, "static", squash=squash)
    runs = []
    run = static._run
    monkeypatch.setattr(static, "_run", lambda *a: runs.append(1) or run(*a))
    first = static(params_of(agent), obs)
    assert len(runs) == 2, "the first static call runs the warm-up, then the rollout"
    _assert_same(first, reference[0])
    second = static(params_of(agent), first.obs)
    assert len(runs) == 3  # warm-up once only
    _assert_same(second, reference[1])


def test_warm_up_leaves_no_trace():
    # the reference first (setups reseed the global RNG that the policy samples from)
    _, agent2, eager, obs2 = _setup("hrl_nested/Pendulum-v1", "none", squash="tanh")
    e1 = eager(params_of(agent2), obs2)
    e2 = eager(params_of(agent2), e1.obs)
    env, agent, static, obs = _setup("hrl_nested/Pendulum-v1", "static", squash="tanh")
    first = static(params_of(agent), obs)
    before = (env.get_state(), static.state_dict(), torch.get_rng_state())
    assert static.state_dict()["episode_length"].abs().sum() > 0  # mid-episode: something to rewind
    static._warm_up()  # runs T steps from the static buffers (env, accumulators and RNG advance) ...
    after = (env.get_state(), static.state_dict(), torch.get_rng_state())
    # ... and rewinds all of it
    for name in ("vars", "elapsed", "needs_reset", "rng_key", "rng_counter"):
        a, b = getattr(before[0], name), getattr(after[0], name)
        for x, y in zip(a.values(), b.values()) if isinstance(a, dict) else [(a, b)]:
            assert torch.equal(x, y), name
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k]), k
    assert torch.equal(before[2], after[2]), "the policy's RNG stream was not rewound"
    # the next rollout is the one the run would have had without the extra warm-up
    _assert_same(first, e1)
    _assert_same(static(params_of(agent), first.obs), e2)


def test_rewind_helpers_restore_a_snapshot():
    env, agent, static, obs = _setup("hrl_nested/CartPole-v1", "static")
    static(params_of(agent), obs)
    snap = static._snapshot()
    assert snap[3] is None  # no CUDA generator to save for a CPU env
    static._run(*static._static)  # advance everything
    torch.rand(3)
    static._rewind(snap)
    assert torch.equal(torch.get_rng_state(), snap[2])
    assert torch.equal(env.get_state().rng_counter, snap[0].rng_counter)
    assert torch.equal(static.state_dict()["episode_return"], snap[1]["episode_return"])


def test_static_capture_needs_an_env_that_can_rewind():
    import gymnasium as gym

    env = envs.make("CartPole-v1", 2, autoreset_mode="same_step")  # a wrapped Gymnasium env
    if getattr(env, "supports_state", True):
        pytest.skip("this adapter can snapshot its state")
    agent = ActorCritic(env.single_observation_space, gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="get_state"):
        make_rollout(env, actor_critic_policy(agent), 4, capture="static")


# ---------------------------------------------------------------------------- device scoping (item 7)
class _Recorder:
    """Stand-ins for the torch.cuda calls the capture makes; each records the device it acts on."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []
        self.current: list[torch.device] = [torch.device("cuda", 0)]  # the process's current device
        rec = self

        class Stream:
            def __init__(self, device=None, **_):
                self.device = rec.current[-1] if device is None else torch.device(device)
                rec.calls.append(("Stream", self.device))

            def wait_stream(self, other):
                rec.calls.append(("wait_stream", (self.device, other.device)))

        class CUDAGraph:
            def __init__(self):
                rec.calls.append(("CUDAGraph", rec.current[-1]))

            def replay(self):
                rec.calls.append(("replay", rec.current[-1]))

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    @contextlib.contextmanager
    def device(self, dev):
        self.current.append(torch.device(dev))
        self.calls.append(("device", torch.device(dev)))
        yield
        self.current.pop()

    def current_stream(self, device=None):
        s = self.Stream.__new__(self.Stream)
        s.device = self.current[-1] if device is None else torch.device(device)
        self.calls.append(("current_stream", s.device))
        return s

    @contextlib.contextmanager
    def stream(self, s):
        self.calls.append(("stream", s.device))
        yield

    @contextlib.contextmanager
    def graph(self, g, stream=None, **_):
        # torch.cuda.graph's default capture stream is one per process, made on the device that was
        # current at the first capture: here an earlier capture on cuda:0
        dev = torch.device("cuda", 0) if stream is None else stream.device
        self.calls.append(("graph", (dev, self.current[-1])))
        yield

    def get_rng_state(self, device="cuda"):
        self.calls.append(("get_rng_state", torch.device(device)))
        return torch.zeros(8, dtype=torch.uint8)

    def set_rng_state(self, state, device="cuda"):
        self.calls.append(("set_rng_state", torch.device(device)))


def test_capture_calls_are_scoped_to_the_env_device(monkeypatch):
    _, agent, collect, obs = _setup("hrl_nested/CartPole-v1", "static")
    collect(params_of(agent), obs)  # fills the static buffers (on CPU)
    rec = _Recorder()
    for name in ("Stream", "CUDAGraph", "device", "current_stream", "stream", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(rec, name))
    monkeypatch.setattr(torch.cuda, "get_rng_state", rec.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", rec.set_rng_state)
    dev1 = torch.device("cuda", 1)
    collect.device, collect.mode = dev1, "cuda_graph"  # as if the env lived on cuda:1, current device 0
    collect(params_of(agent), obs)  # warm-up, rewind, capture, replay
    names = [c[0] for c in rec.calls]
    for needed in ("get_rng_state", "set_rng_state", "Stream", "stream", "CUDAGraph", "graph", "replay"):
        assert needed in names, f"torch.cuda.{needed} was not called"
    for name, arg in rec.calls:
        devices = arg if isinstance(arg, tuple) else (arg,)
        assert all(d == dev1 for d in devices), f"torch.cuda.{name} acted on {arg}, not the env's {dev1}"
    assert names.index("get_rng_state") < names.index("set_rng_state") < names.index("graph")
    assert rec.current == [torch.device("cuda", 0)]  # the caller's current device is left as it was


@pytest.mark.cuda
def test_cuda_graph_on_a_non_current_device_equals_eager():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = f"cuda:{torch.cuda.device_count() - 1}"
    torch.cuda.set_device(0)
    rng0 = torch.cuda.get_rng_state(0)
    _, agent, eager, obs = _setup("hrl_nested/CartPole-v1", "none", device=dev)
    ref = eager(params_of(agent), obs)
    _, agent, graph, obs = _setup("hrl_nested/CartPole-v1", "cuda_graph", device=dev)
    out = graph(params_of(agent), obs)
    assert graph._graph is not None and graph.device == torch.device(dev)
    _assert_same(out, ref)
    assert torch.equal(torch.cuda.get_rng_state(0), rng0)  # device 0's generator untouched
    assert torch.cuda.current_device() == 0


@pytest.mark.cuda
def test_cuda_without_index_is_pinned_to_the_current_device():
    _, _, collect, _ = _setup("hrl_nested/CartPole-v1", "none", device="cuda")
    assert collect.device == torch.device("cuda", torch.cuda.current_device())


@pytest.mark.cuda
def test_cuda_graph_captures_an_env_with_validate_and_raises_after_the_replay():
    # Deferred checks record on the device (no host sync in step): capturable; valid actions give the
    # same rollout as validate=False, and invalid ones surface from the collect call.
    _, agent, ref, obs = _setup("hrl_nested/CartPole-v1", "cuda_graph", device="cuda")
    want = ref(params_of(agent), obs)
    env, agent, graph, obs = _setup("hrl_nested/CartPole-v1", "cuda_graph", device="cuda", validate=True)
    _assert_same(graph(params_of(agent), obs), want)
    assert graph._graph is not None
    policy = actor_critic_policy(agent)

    def invalid(params, obs, carry):  # CartPole's actions are 0 and 1: 5 and 6 are invalid
        out = policy(params, obs, carry)
        return out._replace(action=out.action + 5)

    bad = make_rollout(env, invalid, T)
    with pytest.raises(ValueError, match="actions: envs"):
        bad(params_of(agent), env.reset(seed=0)[0])


def test_no_garbage_collection_turns_the_collector_off_and_restores_it():
    import gc

    from hrl_nested.rollout import no_garbage_collection

    assert gc.isenabled()
    with no_garbage_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_garbage_collection():
        raise RuntimeError("boom")
    assert gc.isenabled()  # restored on an exception too
    gc.disable()
    try:
        with no_garbage_collection():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


@pytest.mark.cuda
def test_capture_survives_an_earlier_collector_freed_by_the_garbage_collector():
    # Seen on an H200: the fifth training run of one process failed its capture, because an earlier
    # run's collector (in a reference cycle) was collected mid-capture and its graph's destructor freed
    # CUDA memory. Here a dead collector with a captured graph waits for the collector, which is set to
    # run on almost every allocation during the next capture.
    import gc

    _, agent, old, obs = _setup("hrl_nested/CartPole-v1", "cuda_graph", device="cuda")
    old(params_of(agent), obs)
    assert old._graph is not None
    cycle = {"collector": old}
    cycle["self"] = cycle
    del old, cycle
    threshold = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        _, agent, new, obs = _setup("hrl_nested/CartPole-v1", "cuda_graph", device="cuda")
        out = new(params_of(agent), obs)
    finally:
        gc.set_threshold(*threshold)
    assert new._graph is not None and out.batch.obs.is_cuda
