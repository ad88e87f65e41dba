"""A user's own sampler: Euler over the model's training sigmas, written from scratch (docs/sampling.md)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config


class PlainEuler(SchedulerMixin, ConfigMixin):
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 steps_offset: int = 1, **_: Any) -> None:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        stride = self.config.num_train_timesteps // num_inference_steps  # "leading" spacing, as SDXL's config
        self.timesteps = (torch.arange(num_inference_steps) * stride).flip(0) + self.config.steps_offset
        self.sigmas = torch.cat([self.train_sigmas[self.timesteps], torch.zeros(1)])
        self.init_noise_sigma = float((self.sigmas.max() ** 2 + 1) ** 0.5)

    def _sigma(self, t: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.sigmas[int((self.timesteps == t).nonzero()[0]) + offset]

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return sample / (self._sigma(timestep) ** 2 + 1) ** 0.5

    def step(self, eps: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, return_dict: bool = False
             ) -> tuple[torch.Tensor]:
        return (sample + eps * (self._sigma(timestep, 1) - self._sigma(timestep)),)

    def add_noise(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return sample + noise * self._sigma(timesteps[0])
