"""CartPole that sleeps 2 ms per step: an env whose cost is waiting, not CPU, so more actors give more
steps per second even on 2 cores (the actor-learner scaling test makes it as
`gym.make("tests.slow_env:SlowCartPole-v1")`, which imports this module in each actor process)."""

import time

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv


class SlowCartPole(CartPoleEnv):
    def step(self, action):
        time.sleep(0.002)
        return super().step(action)


gym.register("SlowCartPole-v1", entry_point=SlowCartPole, max_episode_steps=500)
