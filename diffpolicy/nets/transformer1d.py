"""Transformer denoiser for action chunks: the U-Net's drop-in alternative.

Action tokens ``(B, T, d)`` pass through pre-norm blocks of self-attention (causal by default, as Diffusion
Policy's transformer), cross-attention to observation tokens and an MLP. Conditioning is split by how often it
changes during sampling:

- **Observations** are tokens the actions cross-attend to: one token per observation step (the encoder's
  ``(B, To * F)`` output read as ``(B, To, F)``). They are constant over a chunk's denoising steps, so
  :meth:`TransformerDenoiser.conditioned` projects them to every block's keys and values once per chunk.
- **Diffusion time** modulates every block through adaptive LayerNorm with zero-initialised gates (DiT's
  adaLN-Zero): ``x + gate * f(scale * LN(x) + shift)``. These per-block ``(shift, scale, gate)`` vectors are one
  ``Linear`` of the time embedding (``self.film``, like the U-Net's FiLM), so a sampling plan's ``TimeTable`` can
  precompute them for the whole grid.

Diffusion Policy's transformer instead puts the time token among the condition tokens of an encoder, which then has
to run again at every denoising step; here a step costs only the action tokens' attention and MLPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import TimeEmbedding


class Attention(nn.Module):
    """Multi-head attention of queries ``(B, T, d)`` over keys/values ``(B, S, d)`` (scaled dot product)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"transformer: d_model {d_model} is not divisible into {n_heads} heads")
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S, d)`` -> ``(B, H, S, d / H)``."""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``memory`` ``(B, S, d)``, each ``(B, H, S, d / H)``."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                causal: bool = False) -> torch.Tensor:
        """Self-attention of ``x`` ``(B, T, d)`` (``kv`` None) or cross-attention over precomputed ``kv``."""
        k, v = self.keys_values(x) if kv is None else kv
        if k.shape[0] != x.shape[0]:  # one condition broadcast over a batch of chunks
            k, v = k.expand(x.shape[0], -1, -1, -1), v.expand(x.shape[0], -1, -1, -1)
        h = F.scaled_dot_product_attention(self.heads(self.q(x)), k, v, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(h.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Self-attention, cross-attention and MLP, each as ``x + gate * f(LN(x) * (1 + scale) + shift)``."""

    n_mod = 9  # (shift, scale, gate) for each of the three sublayers

    def __init__(self, d_model: int, n_heads: int, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6) for _ in range(3)])
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.cross_attn = Attention(d_model, n_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(mlp_ratio * d_model, d_model))
        self.film_dim = self.n_mod * d_model

    def forward(self, x: torch.Tensor, mod: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                causal: bool) -> torch.Tensor:
        """``x`` ``(B, T, d)``, ``mod`` ``(B, 9 d)``, ``kv`` the observation tokens' keys/values -> ``(B, T, d)``."""
        parts = mod[:, None].chunk(self.n_mod, dim=-1)  # (B, 1, d) each: broadcast over the T tokens
        sublayers = (lambda h: self.self_attn(h, causal=causal), lambda h: self.cross_attn(h, kv), self.mlp)
        for i, (norm, f) in enumerate(zip(self.norms, sublayers)):
            shift, scale, gate = parts[3 * i: 3 * i + 3]
            x = x + gate * f(torch.addcmul(shift, norm(x), 1 + scale))
        return x


class TransformerDenoiser(nn.Module):
    """Denoiser network ``(B, T, D) -> (B, T, D)`` conditioned on time and observation tokens.

    Args:
        action_dim: ``D``, the per-step dimension of the denoised sequence.
        global_cond_dim: size of the observation embedding ``(B, To * F)``; read as ``n_cond_tokens`` tokens.
        n_cond_tokens: ``To``, observation tokens in the embedding (the policy's ``n_obs_steps``).
        horizon: the longest chunk (learned position embeddings); shorter chunks use the first positions.
        d_model, n_layers, n_heads: token width, blocks, attention heads.
        time_embed_dim: size of the diffusion-time embedding.
        dropout: on attention weights and the MLP's hidden layer (training only).
        causal: action tokens attend only to themselves and earlier ones (Diffusion Policy's choice).
    """

    def __init__(self, action_dim: int, global_cond_dim: int, n_cond_tokens: int = 1, horizon: int = 16,
                 d_model: int = 256, n_layers: int = 8, n_heads: int = 4, time_embed_dim: int = 128,
                 dropout: float = 0.1, causal: bool = True):
        super().__init__()
        if global_cond_dim <= 0 or global_cond_dim % n_cond_tokens:
            raise ValueError(f"transformer: the observation embedding ({global_cond_dim}) must split into "
                             f"{n_cond_tokens} equal tokens")
        self.global_cond_dim, self.n_cond_tokens, self.horizon = global_cond_dim, n_cond_tokens, horizon
        self.causal, self.time_embed_dim = causal, time_embed_dim
        self.time_embed = TimeEmbedding(time_embed_dim)
        self.input = nn.Linear(action_dim, d_model)
        self.pos = nn.Parameter(torch.zeros(1, horizon, d_model))
        per_token = global_cond_dim // n_cond_tokens
        self.cond_input = nn.Sequential(nn.Linear(per_token, d_model), nn.Mish(), nn.Linear(d_model, d_model))
        self.cond_pos = nn.Parameter(torch.zeros(1, n_cond_tokens, d_model))
        self.cond_norm = nn.LayerNorm(d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.output = nn.Linear(d_model, action_dim)
        # every block's (shift, scale, gate) and the output's (shift, scale): one Linear of the time features
        self.film_splits = [b.film_dim for b in self.blocks] + [2 * d_model]
        self.film = nn.Linear(time_embed_dim, sum(self.film_splits))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small normal weights; zero gates and output (each block starts as the identity, the net outputs 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        for m in (self.film, self.output):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- conditioning (the U-Net's interface: a sampler caches the condition part, a TimeTable the time part) ------
    def check_horizon(self, horizon: int) -> None:
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"horizon {horizon} does not fit a transformer built for chunks of up to "
                             f"{self.horizon} steps (its position embeddings)")

    def time_film(self, t: torch.Tensor) -> torch.Tensor:
        """All adaLN modulation vectors from the diffusion time: ``(B,)`` -> ``(B, F)``."""
        return self.film(F.mish(self.time_embed(t)))

    def memory(self, global_cond: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each block's cross-attention keys/values from the observation embedding ``(B, To * F)``."""
        if global_cond is None or global_cond.shape[-1] != self.global_cond_dim:
            got = None if global_cond is None else tuple(global_cond.shape)
            raise ValueError(f"global_cond: expected shape (B, {self.global_cond_dim}), got {got}")
        tokens = self.cond_input(global_cond.unflatten(-1, (self.n_cond_tokens, -1))) + self.cond_pos
        tokens = self.cond_norm(tokens)
        return [b.cross_attn.keys_values(tokens) for b in self.blocks]

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``t`` ``(B,)``, ``global_cond`` ``(B, To * F)`` -> ``(B, T, D)``."""
        return self.forward_film(x, self.time_film(t), self.memory(global_cond))

    def forward_film(self, x: torch.Tensor, film: torch.Tensor,
                     memory: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The trunk, given the time modulation ``(B, F)`` and the blocks' keys/values: ``(B, T, D)`` -> same."""
        self.check_horizon(x.shape[1])
        mods = film.split(self.film_splits, dim=1)
        h = self.input(x) + self.pos[:, : x.shape[1]]
        for block, mod, kv in zip(self.blocks, mods, memory):
            h = block(h, mod, kv, self.causal)
        shift, scale = mods[-1][:, None].chunk(2, dim=-1)
        return self.output(torch.addcmul(shift, self.final_norm(h), 1 + scale))

    def conditioned(self, global_cond: torch.Tensor | None = None, time_film=None) -> "ConditionedTransformer":
        """A ``net(x, t)`` callable for samplers with the observation tokens' keys/values computed once per chunk.

        ``time_film``: a replacement for :meth:`time_film` (e.g. a plan's
        :class:`~diffpolicy.policy.sampling.TimeTable`).
        """
        return ConditionedTransformer(self, global_cond, time_film)


class ConditionedTransformer:
    """The per-chunk view of a :class:`TransformerDenoiser`; see :meth:`TransformerDenoiser.conditioned`."""

    def __init__(self, net: TransformerDenoiser, global_cond, time_film=None):
        self.net, self.global_cond = net, global_cond
        self.time_film = time_film or net.time_film
        self.kv = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is not None:
            raise ValueError("a conditioned transformer carries its condition from conditioned(global_cond=...) and "
                             "takes none per call; for classifier-free guidance sample with the network itself")
        if self.kv is None:
            self.kv = self.net.memory(self.global_cond)
        return self.net.forward_film(x, self.time_film(t), self.kv)
