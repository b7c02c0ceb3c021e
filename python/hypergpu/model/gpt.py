"""A GPT-style decoder-only transformer for ``model = "gpt"``.

Pre-norm blocks (LayerNorm → causal self-attention → residual, LayerNorm →
4x GELU MLP → residual), learned token and position embeddings, a final
LayerNorm and an lm head tied to the token embedding. The causal mask is
``scaled_dot_product_attention(is_causal=True)``, not a buffer, so the
state dict holds only float parameters (the tied weight under two names;
:class:`~hypergpu.model.layout.ParamLayout` keeps it once).

Sizes from :func:`gpt_param_count` (unique parameters; vocab 256 is
byte-level, 50257 is GPT-2's BPE):

=======  ======  ======  ==========  =====  ===========
n_layer  n_head  n_embd  block_size  vocab   parameters
=======  ======  ======  ==========  =====  ===========
4        4       128     128         256        842,496
5        4       128     128         256      1,040,768
6        6       192     256         256      2,767,872
6        6       384     256         256     10,844,160
8        8       512     512         256     25,613,312
12       12      768     1024        256     86,039,040
16       12      768     1024        256    114,390,528
12       12      768     1024        50257  124,439,808
=======  ======  ======  ==========  =====  ===========

The first row is ``GPTConfig()``'s default; the last is GPT-2 small
(124M), whose published size this count reproduces.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from hypergpu.config.schema import GPTConfig
from hypergpu.errors import InvalidArgumentError


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees only positions <= t."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        q, k, v = (
            t.view(batch, steps, self.n_head, width // self.n_head).transpose(1, 2)
            for t in self.qkv(x).split(width, dim=2)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(batch, steps, width)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    """The block's MLP: widen 4x, GELU, project back."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids (B, T) → next-token logits (B, T, vocab_size).

    ``vocab_size`` is the argument, not ``cfg.vocab_size`` (which may be
    unset until the corpus is known).
    """

    def __init__(self, cfg: GPTConfig, vocab_size: int):
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = [Block(cfg) for _ in range(cfg.n_layer)]
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self._init_weights(blocks)

    def _init_weights(self, blocks: list[Block]) -> None:
        # GPT-2: every block adds two projections to the residual stream, so
        # scaling them by 1/sqrt(2 * n_layer) keeps its variance from growing with depth.
        residual = {m for b in blocks for m in (b.attn.proj, b.mlp.proj)}
        residual_std = 0.02 / math.sqrt(2 * len(blocks))
        for module in self.modules():
            if module is self.lm_head:
                continue  # its weight is wte's, drawn once below
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, residual_std if module in residual else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise InvalidArgumentError(f"GPT expects token ids of shape (B, T), got {tuple(idx.shape)}")
        steps = idx.shape[1]
        if steps > self.block_size:
            raise InvalidArgumentError(
                f"GPT: sequence length {steps} exceeds block_size {self.block_size}"
            )
        pos = torch.arange(steps, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def num_params(self) -> int:
        """Unique parameters: the tied embedding counts once."""
        return sum(p.numel() for p in self.parameters())


def gpt_param_count(cfg: GPTConfig, vocab_size: int) -> int:
    """What ``GPT(cfg, vocab_size).num_params()`` returns, without building it."""
    e = cfg.n_embd
    # per block: two LayerNorms, qkv and out projections, fc and its projection
    per_block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
    embeddings = vocab_size * e + cfg.block_size * e
    return embeddings + cfg.n_layer * per_block + 2 * e
