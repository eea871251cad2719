"""Any registered gymnasium env behind the batched-env API the learners consume.

Shape legend: B num_envs.

``GymBatchedEnv("MiniGrid-MemoryS13Random-v0", 16)`` steps ``B`` copies of a
python gymnasium env through gymnasium's synchronous vector env (finished envs
reset in the same step, ``AutoresetMode.SAME_STEP``) and hands the learner
torch tensors on its device, exactly like the suite's own batched tasks
(``envs.core.BatchedEnv``): ``reset``, ``step``, ``info`` with ``success``,
``episode_return`` and ``episode_length``, ``state_dict``. It is the slow path:
every step goes through python and reads the actions back to the host.

The env id is a registered id or gymnasium's ``"module:EnvId"`` form, which
imports ``module`` first (as ``gymnasium.make`` does) so that a package can
register its tasks on import: ``GymBatchedEnv("my_package:MyTask-v0", 16)``.

Observations become a flat Dict of the fields the policy encoder reads
(``policies.encoder``), under the keys of ``policies.encoder.flatten_space``:
a Dict or Tuple observation, nested or not, gives one field per leaf (``"a.b"``,
``"0"``), any other observation the field ``"observation"``. Each field is

- ``Discrete``, ``MultiDiscrete`` or ``MultiBinary``: kept as it is (tokens,
  or 0/1 features);
- a ``uint8`` ``H x W x 3`` Box of a minigrid env (``MiniGridEnv`` underneath,
  without minigrid's RGB image wrappers): kept as a window of minigrid
  (object, colour, state) cells, which ``reset`` checks fit the encoder's
  tables;
- any other ``uint8`` Box, such as pixel frames: kept as ``uint8``, with
  ``H x W x 3`` frames flattened to one axis so that the encoder does not read
  them as cells; the encoder flattens them to floats, divided by 255 when the
  bounds are 0..255;
- any other numeric Box (float, integer or bool, any rank): cast to float32,
  values unscaled; the encoder flattens it;
- text (minigrid's ``mission``, ``Text``): dropped, as the encoder does not
  read text (minigrid's memory tasks show the goal in the image, not the
  mission).

Anything else (a text-only observation, ``Graph``, ``Sequence``, ``OneOf``) is
a ValueError naming the env id, the field and what is allowed.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import RGBImgObsWrapper, RGBImgPartialObsWrapper

from envs.core import check_device, check_int
from policies.encoder import (
    ALLOWED_SPACES,
    NUM_COLORS,
    NUM_OBJECTS,
    NUM_STATES,
    SINGLE_KEY,
    describe,
    flatten_observation,
    flatten_space,
    is_cell_image,
    is_supported_field,
)

Tensor = torch.Tensor
Obs = dict[str, Tensor]
StepResult = tuple[Obs, Tensor, Tensor, Tensor, dict[str, Tensor]]

SUCCESS_KEYS = ("success", "is_success")
"""Keys of an env's own success flag in its final-step info (the suite's, then SB3's)."""

ENV_IDS_ALLOWED = (
    "a registered gymnasium id (e.g. CartPole-v1), or 'module:EnvId' where importing "
    "module registers EnvId"
)
"""What an env id may be, for error messages."""

# Exclusive upper bounds of the (object, colour, state) channels of an image cell.
CELL_LIMITS = np.array([NUM_OBJECTS, NUM_COLORS, NUM_STATES])


def _is_text(space: gym.Space) -> bool:
    # gymnasium's Text and minigrid's MissionSpace both hold strings (dtype kind "U").
    return isinstance(space, gym.spaces.Text) or getattr(space.dtype, "kind", None) == "U"


def shows_minigrid_cells(env: gym.Env) -> bool:
    """Whether ``env``'s ``uint8`` ``H x W x 3`` images are minigrid cells: it is a minigrid
    env, and none of its wrappers turns the cells into RGB pixels."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, (RGBImgObsWrapper, RGBImgPartialObsWrapper)):
            return False
        env = env.env
    return isinstance(env, MiniGridEnv)


def _adapt_field(env_id: str, key: str, space: gym.Space, cells: bool) -> gym.Space | None:
    """The space the encoder gets for one observation field (None: the field is dropped);
    ``cells``: whether ``uint8 H x W x 3`` images are minigrid cells."""
    if _is_text(space):
        return None
    if not is_supported_field(space):
        what = "observation space" if key == SINGLE_KEY else f"observation field {key!r} of space"
        raise ValueError(f"{env_id}: {what} {describe(space)} is not supported; "
                         f"allowed: {ALLOWED_SPACES}, or text (dropped)")  # fmt: skip
    if not isinstance(space, gym.spaces.Box):
        return space
    if space.dtype == np.uint8:
        if is_cell_image(space) and not cells:  # pixel frames, read as features
            return gym.spaces.Box(space.low.flatten(), space.high.flatten(), dtype=np.uint8)
        return space
    low = space.low.astype(np.float32)
    high = space.high.astype(np.float32)
    return gym.spaces.Box(low, high, space.shape, dtype=np.float32)


def adapt_observation_space(env_id: str, space: gym.Space, cells: bool = True) -> gym.spaces.Dict:
    """The flat Dict observation space the policy sees for an env's ``space`` (see the module
    doc); ``cells``: whether ``uint8 H x W x 3`` images are minigrid cells."""
    if _is_text(space):
        raise ValueError(f"{env_id}: text observations ({describe(space)}) are not supported; "
                         f"allowed: {ALLOWED_SPACES}")  # fmt: skip
    try:
        leaves = flatten_space(space)
    except ValueError as error:
        raise ValueError(f"{env_id}: {error}") from None
    fields = {key: _adapt_field(env_id, key, sub, cells) for key, sub in leaves.items()}
    fields = {key: sub for key, sub in fields.items() if sub is not None}
    if not fields:
        raise ValueError(f"{env_id}: observation space {describe(space)} has no field the policy "
                         f"can read; allowed: {ALLOWED_SPACES}")  # fmt: skip
    return gym.spaces.Dict(fields)


class ObservationFields(gym.ObservationWrapper):
    """Turns one env's observations into the flat Dict of :func:`adapt_observation_space`."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        self.original_space = env.observation_space
        self.observation_space = adapt_observation_space(
            env_id, env.observation_space, shows_minigrid_cells(env))
        self.layouts = {key: (space.dtype, space.shape)
                        for key, space in self.observation_space.spaces.items()}  # fmt: skip

    def observation(self, observation: Any) -> dict[str, Any]:
        observation = flatten_observation(self.original_space, observation)
        return {key: np.asarray(observation[key], dtype=dtype).reshape(shape)
                for key, (dtype, shape) in self.layouts.items()}  # fmt: skip


def check_gym_env(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of ``env_id``: a registered id, or ``"module:EnvId"``, which
    imports ``module`` first (as ``gymnasium.make`` does). A module that cannot be imported
    (whatever it raises) or an id that is not registered is a one-line ValueError."""
    if not isinstance(env_id, str):
        raise ValueError(f"env id must be a string, got {env_id!r}; allowed: {ENV_IDS_ALLOWED}")
    module, colon, name = env_id.rpartition(":")
    if colon and env_id not in gym.registry:
        if not module or not name or ":" in module:
            raise ValueError(f"malformed env id {env_id!r}; allowed: {ENV_IDS_ALLOWED}")
        try:
            importlib.import_module(module)
        except Exception as error:  # a broken package is the user's input error here
            reason = _one_line(f"{type(error).__name__}: {error}")
            raise ValueError(f"env id {env_id!r}: cannot import module {module!r} ({reason}); "
                             f"allowed: {ENV_IDS_ALLOWED}") from None  # fmt: skip
    else:
        name = env_id
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        registered_by = f" (importing {module!r} does not register it)" if colon else ""
        reason = _one_line(str(error))
        raise ValueError(f"unknown gymnasium env id {env_id!r}{registered_by}: {reason}; "
                         f"allowed: {ENV_IDS_ALLOWED}") from None  # fmt: skip


def _one_line(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


def env_seeds(seed: int, count: int) -> list[int]:
    """The seeds of ``count`` envs reset with ``seed``: independent draws from it, so that no
    two seeds (of neighbouring runs, or of the ranks of one) give envs the same episodes."""
    return [int(value) for value in np.random.SeedSequence(seed).generate_state(count)]


class GymBatchedEnv:
    """``num_envs`` copies of a registered gymnasium env, stepped as one batched env.

    Same interface as :class:`envs.core.BatchedEnv`; the differences, which
    follow from the envs being python objects:

    - ``info["success"]`` is the env's own flag (``info["success"]``, else
      SB3's ``info["is_success"]``, at the episode's last step) when it reports
      one, and ``episode_return > 0`` otherwise.
    - ``reset(desync=True)`` starts every env at step 0 (the time limit lives
      inside the python env and cannot be moved); episodes desynchronise on
      their own as soon as their lengths differ.
    - ``state_dict`` holds the seed generator and the per-env step and return
      counters, not the envs: a python env cannot be snapshotted. So
      ``load_state_dict`` restarts every episode (seeded from the restored
      generator, so a resumed run is reproducible, but it does not continue
      the interrupted episodes); ``resumes_exactly`` is False and the new
      first observations are in ``obs``.
    - ``layout`` and ``oracle_actions`` raise NotImplementedError.
    """

    resumes_exactly = False
    keep_final_obs: bool = False

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **env_kwargs: Any,
    ):
        spec = check_gym_env(env_id)
        self.name = env_id
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.device = check_device(device)
        try:
            self.vector_env = gym.make_vec(
                spec,
                num_envs=self.num_envs,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP, "copy": False},
                wrappers=[lambda env: ObservationFields(env, env_id)],
                **env_kwargs,
            )
        except TypeError as error:  # unknown keyword arguments of the env's constructor
            raise ValueError(f"{env_id}: cannot build with {env_kwargs}: {error}") from None
        assert isinstance(self.vector_env, SyncVectorEnv)
        self.single_observation_space: gym.spaces.Dict = self.vector_env.single_observation_space
        action_space = self.vector_env.single_action_space
        if not isinstance(action_space, gym.spaces.Discrete):
            self.vector_env.close()
            raise ValueError(f"{env_id}: action space {action_space} is not supported; "
                             "the policies need Discrete(n)")  # fmt: skip
        self.single_action_space = gym.spaces.Discrete(int(action_space.n))
        self.action_start = int(action_space.start)
        first = self.vector_env.envs[0]
        self.max_steps: int | None = (
            first.spec.max_episode_steps if first.spec and first.spec.max_episode_steps
            else getattr(first.unwrapped, "max_steps", None)
        )  # fmt: skip
        self.image_keys = [key for key, space in self.single_observation_space.spaces.items()
                           if is_cell_image(space)]  # fmt: skip
        self.step_count = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self.rng = np.random.default_rng(seed)
        self.obs = self.reset()

    # -- host <-> device -----------------------------------------------------
    def _tensors(self, obs: dict[str, np.ndarray]) -> Obs:
        # torch.tensor copies: the vector env reuses its observation buffer.
        return {key: torch.tensor(value, device=self.device) for key, value in obs.items()}

    def _check_cells(self, obs: dict[str, np.ndarray]) -> None:
        for key in self.image_keys:
            highest = obs[key].reshape(-1, 3).max(axis=0)
            if (highest >= CELL_LIMITS).any():
                raise ValueError(
                    f"{self.name}: observation field {key!r} holds values up to "
                    f"{highest.tolist()} per channel, beyond minigrid's (object, colour, state) "
                    f"cell encoding (< {CELL_LIMITS.tolist()}), which a minigrid env's uint8 "
                    "H x W x 3 images are read as; pixel images of a minigrid env need "
                    "minigrid's RGBImgObsWrapper or RGBImgPartialObsWrapper"
                )

    # -- the batched-env API ---------------------------------------------------
    def reset(self, seed: int | None = None, desync: bool = False) -> Obs:
        """Start a new episode in every env and return the first observations.

        ``seed`` seeds the envs with independent seeds drawn from it
        (``numpy.random.SeedSequence``: runs of neighbouring seeds, or the ranks of a
        distributed run seeded ``seed + rank``, share no env's episodes, as they would with
        gymnasium's ``seed + i``) and the generator that seeds later resets; without it the
        seed comes from that generator. ``desync`` has no effect (see the class docstring).
        """
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        else:
            seed = int(self.rng.integers(2**31 - self.num_envs))
        obs, _ = self.vector_env.reset(seed=env_seeds(int(seed), self.num_envs))
        self._check_cells(obs)
        self.step_count[:] = 0
        self.episode_return[:] = 0.0
        self.obs = self._tensors(obs)
        return self.obs

    def step(self, actions: Tensor) -> StepResult:
        """Step every env with ``actions`` [B] (ints in [0, n)); finished envs restart."""
        actions_np = torch.as_tensor(actions).cpu().numpy().astype(np.int64) + self.action_start
        obs, reward, terminated, truncated, info = self.vector_env.step(actions_np)
        done = terminated | truncated
        self.step_count += 1
        self.episode_return += reward
        out = {
            "success": self._success(done, info),
            "episode_return": self.episode_return.astype(np.float32),
            "episode_length": self.step_count.copy(),
        }
        if self.keep_final_obs:
            out_obs = self._final_obs(obs, done, info)
        self.step_count[done] = 0
        self.episode_return[done] = 0.0
        self.obs = self._tensors(obs)
        info_tensors = {key: torch.as_tensor(value, device=self.device)
                        for key, value in out.items()}  # fmt: skip
        if self.keep_final_obs:
            info_tensors["final_obs"] = self._tensors(out_obs)
        return (
            self.obs,
            torch.as_tensor(reward.astype(np.float32), device=self.device),
            torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device),
            info_tensors,
        )

    def _success(self, done: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        success = self.episode_return > 0
        final_info = info.get("final_info", {})
        for key in SUCCESS_KEYS:
            if key in final_info:
                reported = final_info[f"_{key}"] & done
                success = np.where(reported, final_info[key].astype(bool), success)
                break
        return success & done

    def _final_obs(self, obs: dict[str, np.ndarray], done: np.ndarray,
                   info: dict[str, Any]) -> dict[str, np.ndarray]:  # fmt: skip
        final = {key: value.copy() for key, value in obs.items()}
        for index in np.flatnonzero(done):
            for key in final:
                final[key][index] = info["final_obs"][index][key]
        return final

    def state_dict(self) -> dict[str, Any]:
        """The seed generator and the counters (the python envs themselves cannot be stored)."""
        return {
            "env_id": self.name,
            "num_envs": self.num_envs,
            "rng": self.rng.bit_generator.state,
            "step_count": torch.from_numpy(self.step_count.copy()),
            "episode_return": torch.from_numpy(self.episode_return.copy()),
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore the seed generator of a :meth:`state_dict` and restart every episode."""
        if data.get("env_id") != self.name or data.get("num_envs") != self.num_envs:
            raise ValueError(
                f"env state of {data.get('env_id')!r} x {data.get('num_envs')} does not fit "
                f"this env ({self.name!r} x {self.num_envs})"
            )
        self.rng.bit_generator.state = data["rng"]
        self.reset()

    def layout(self, index: int) -> dict[str, Any]:
        """Not available: a python env's episode cannot be exported as plain data."""
        raise NotImplementedError(
            f"layout() is only available for the suite's own tasks, not {self.name}"
        )

    def oracle_actions(self) -> Tensor:
        """Not available: only the suite's own tasks have a scripted oracle."""
        raise NotImplementedError(
            f"oracle_actions() is only available for the suite's own tasks, not {self.name}"
        )

    def close(self) -> None:
        """Close the python envs."""
        self.vector_env.close()

    def __repr__(self) -> str:
        return f"GymBatchedEnv({self.name!r}, num_envs={self.num_envs}, device={self.device})"


def time_limit(env_id: str) -> int | None:
    """The episode time limit a gymnasium env declares (``spec.max_episode_steps``, else
    minigrid's ``max_steps``), or None."""
    env = GymBatchedEnv(env_id, 1)
    try:
        return env.max_steps
    finally:
        env.close()
