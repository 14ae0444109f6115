"""dqn_atari's frame replay buffer (each frame stored once, stacks rebuilt when sampling) returns
exactly what a plain buffer of stacked (obs, next_obs) would: across episode starts, terminations,
truncations (true final observation) and the ring's wrap-around. For 1M transitions it allocates one
frame per transition (not two stacks of four), and a process that fills it stays under 8 GB."""

import json
import subprocess
import sys
from collections import deque

import gymnasium as gym
import numpy as np
import pytest

from tests.helpers import REPO, load_script

SCRIPTS = {fw: load_script("dqn_atari", fw) for fw in ("mlx", "torch")}


class PlainBuffer:
    """The reference: a ring of full (obs, next_obs) stacks, sampled like the frame buffer."""

    def __init__(self, buffer_size, obs_shape):
        self.buffer_size, self.pos, self.full = buffer_size, 0, False
        self.obs = np.zeros((buffer_size,) + obs_shape, np.uint8)
        self.next_obs = np.zeros((buffer_size,) + obs_shape, np.uint8)
        self.actions = np.zeros(buffer_size, np.int32)
        self.rewards = np.zeros(buffer_size, np.float32)
        self.dones = np.zeros(buffer_size, np.float32)

    def __len__(self):
        return self.buffer_size if self.full else self.pos

    def add(self, obs, next_obs, actions, rewards, terminations, truncations):
        i = self.pos
        self.obs[i], self.next_obs[i], self.actions[i] = obs[0], next_obs[0], actions[0]
        self.rewards[i], self.dones[i] = rewards[0], terminations[0]
        self.pos = (self.pos + 1) % self.buffer_size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        idx = np.random.randint(0, len(self), size=batch_size)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]


def assert_same_samples(frame_buffer, plain, seed, batch_size=64):
    assert len(frame_buffer) == len(plain)
    np.random.seed(seed)
    got = frame_buffer.sample(batch_size)
    np.random.seed(seed)
    want = plain.sample(batch_size)
    for name, g, w in zip(("obs", "actions", "rewards", "next_obs", "dones"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=f"{name} differs after {frame_buffer.count} transitions")


def synthetic_stream(rng, n_transitions, frame_shape, stack=4):
    """(obs, real_next_obs, action, reward, terminated, truncated) as FrameStackObservation and
    SAME_STEP autoreset produce them: a fresh stack repeats the reset frame; a truncated episode's
    final observation is a frame of its own. Episode lengths include 1 and 2 (shorter than a stack)."""
    lengths = iter([1, 2, 3, 1, 5, 4, 1, 1, 9] + list(rng.integers(1, 12, size=n_transitions)))
    frame_id = 0

    def new_frame():
        nonlocal frame_id
        frame_id += 1
        return rng.integers(0, 256, size=frame_shape, dtype=np.uint8)

    produced = 0
    while produced < n_transitions:
        length, end = next(lengths), rng.choice(["terminated", "truncated"])
        frames = deque([new_frame()] * stack, maxlen=stack)
        for t in range(length):
            obs = np.stack(frames)[None]
            frames.append(new_frame())
            last = t == length - 1
            yield (
                obs,
                np.stack(frames)[None],
                rng.integers(0, 6, size=1),
                rng.normal(size=1).astype(np.float32),
                np.array([last and end == "terminated"]),
                np.array([last and end == "truncated"]),
            )
            produced += 1


@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("buffer_size", [1, 5, 13])
def test_frame_buffer_matches_plain_buffer_synthetic(framework, buffer_size):
    rng = np.random.default_rng(buffer_size)
    frame_buffer = SCRIPTS[framework].FrameReplayBuffer(buffer_size, frame_shape=(3, 2))
    plain = PlainBuffer(buffer_size, (4, 3, 2))
    for n, transition in enumerate(synthetic_stream(rng, 300, (3, 2))):
        frame_buffer.add(*transition)
        plain.add(*transition)
        assert_same_samples(frame_buffer, plain, seed=n)
        # episode-start frames are dropped once no stored transition reads them
        assert len(frame_buffer.first_frames) <= buffer_size + 4
    assert frame_buffer.count >= 300 > 10 * buffer_size, "the ring wrapped many times"


def test_frame_buffer_matches_plain_buffer_on_breakout():
    """Real frames: Breakout through the script's own preprocessing (life losses terminate) with a
    37-step time limit on top (truncation, true final observation), a 50-slot ring that wraps."""
    module = SCRIPTS["mlx"]
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.TimeLimit(module.make_env("BreakoutNoFrameskip-v4", 0, False, "test")(), max_episode_steps=37)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    frame_buffer = module.FrameReplayBuffer(50)
    plain = PlainBuffer(50, (4, 84, 84))
    obs, _ = envs.reset(seed=0)
    envs.action_space.seed(0)
    n_terminated = n_truncated = 0
    for step in range(400):
        actions = envs.action_space.sample()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        real_next = module.real_next_obs(next_obs, infos)
        frame_buffer.add(obs, real_next, actions, rewards, terminations, truncations)
        plain.add(obs, real_next, actions, rewards, terminations, truncations)
        n_terminated, n_truncated = n_terminated + terminations[0], n_truncated + truncations[0]
        obs = next_obs
        if step % 7 == 0 or terminations[0] or truncations[0]:
            assert_same_samples(frame_buffer, plain, seed=step)
    envs.close()
    assert n_terminated >= 2 and n_truncated >= 2, (n_terminated, n_truncated)
    assert_same_samples(frame_buffer, plain, seed=1234, batch_size=256)


def test_one_million_transitions_array_sizes():
    """What the buffer allocates (np.zeros: pages become resident only when written, see the next test)."""
    rb = SCRIPTS["mlx"].FrameReplayBuffer(1_000_000)
    assert rb.frames.nbytes == (1_000_000 + 4) * 84 * 84  # each frame once, plus the oldest stack's history
    assert sum(a.nbytes for a in (rb.steps, rb.actions, rb.rewards, rb.dones)) == 1_000_000 * (8 + 4 + 4 + 4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is read from /proc")
def test_one_million_transitions_fit_in_8_gb():
    """Measured, not added up: benchmark.micro.atari_memory fills the script's buffer at its default size with
    1.1M transitions (synthetic 84x84 frames, every page written, the ring wrapped), samples batches for
    the Q-network, and reports the peak resident memory (VmHWM) of that fresh process."""
    cmd = [sys.executable, "-m", "benchmark.micro.atari_memory", "--child", "mlx"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["buffer_size"] == 1_000_000 and row["transitions_added"] > 1_000_000, row
    assert row["peak_rss_mb"] * 2**20 < 8e9, row
