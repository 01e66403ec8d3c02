"""The object pointer: index tokens scored against the prompt's object tokens.

In the paper's layout an answer names box k by the LM head's row of ``<objk>``: the LLM has to find the
object token that matches the phrase, read the index written just before it and emit that index's row.
The pointer gives that step its own parameters, as detection heads do with class queries:

    s[t, k] = <W_q h_t, W_k o_k> / sqrt(P)

where h_t is the LLM's last hidden state at answer position t and o_k its last hidden state at box k's
``<objfeat>`` placeholder. The vocabulary distribution then factorises into "an index comes" (the LM's
log-sum-exp over its ``<obj*>`` logits) times "which one" (a softmax of s over the prompt's boxes):

    logit[<objk>] = logsumexp_j lm_logit[<objj>] + log_softmax_k s[t, k]      (k < K; -inf for k >= K)

Every other token keeps the LM's logit. The output is the same text (``<objects><obj3></objects>``), the
loss the same next-token cross-entropy; an index beyond the prompt's boxes cannot be produced.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ObjectPointer(nn.Module):
    """Bilinear scores between answer positions and object tokens.

    Args:
        hidden_size: the LLM's hidden size H.
        dim: the width P of queries and keys.
    """

    def __init__(self, hidden_size: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, dim)
        self.key = nn.Linear(hidden_size, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def keys(self, hidden: torch.Tensor, objfeat_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of the object tokens, in prompt order.

        Args:
            hidden: (B, L, H) last hidden states of the prompt.
            objfeat_mask: (B, L) bool, True at ``<objfeat>`` placeholders (K_i per sample).
        Returns:
            keys (B, K_max, P) (zeros past K_i) and key_mask (B, K_max) bool.
        """
        counts = objfeat_mask.sum(dim=1)
        k_max = int(counts.max()) if counts.numel() else 0
        projected = self.key(hidden[objfeat_mask].to(self.key.weight.dtype))  # (sum K_i, P), autocast's dtype
        keys = projected.new_zeros((hidden.shape[0], k_max, projected.shape[-1]))
        key_mask = torch.arange(k_max, device=hidden.device)[None, :] < counts[:, None]
        keys[key_mask] = projected
        return keys, key_mask

    def forward(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Scores (B, T, K_max) of answer positions ``hidden`` (B, T, H) against ``keys`` (B, K_max, P)."""
        q = self.query(hidden.to(self.query.weight.dtype))
        return torch.einsum("btp,bkp->btk", q, keys.to(q.dtype)) * self.scale


def point_logits(
    logits: torch.Tensor, scores: torch.Tensor, key_mask: torch.Tensor, index_token_ids: torch.Tensor
) -> torch.Tensor:
    """Replace the LM's index-token logits by "an index" x "which box" (see the module docstring).

    Args:
        logits: (B, T, V) LM logits.
        scores: (B, T, K_max) pointer scores; key_mask (B, K_max) marks the real boxes.
        index_token_ids: (N,) ids of ``<obj0>`` … ``<obj{N-1}>``, N >= K_max.
    Returns:
        (B, T, V) float32 logits; ``<objk>`` for k >= K_i is -inf (a sample without boxes can name none).
    """
    n_index = index_token_ids.numel()
    if scores.shape[-1] > n_index:
        raise ValueError(f"{scores.shape[-1]} boxes but only {n_index} index tokens")
    out = logits.float()
    if out is logits:  # never write into the caller's tensor
        out = out.clone()
    ids = index_token_ids.to(out.device)
    lm_index = out.index_select(-1, ids)  # (B, T, N)
    any_index = torch.logsumexp(lm_index, dim=-1, keepdim=True)  # (B, T, 1)
    mask = key_mask[:, None, :].expand_as(scores)
    # padding keys out of the softmax; a sample without boxes keeps finite zeros here (no NaN) and is
    # masked to -inf after it
    which = scores.float().masked_fill(~mask, float("-inf"))
    which = which.masked_fill(~mask.any(-1, keepdim=True), 0.0).log_softmax(-1).masked_fill(~mask, float("-inf"))
    index_logits = torch.full_like(lm_index, float("-inf"))
    index_logits[..., : scores.shape[-1]] = any_index + which
    return out.index_copy_(-1, ids, index_logits)


__all__ = ["ObjectPointer", "point_logits"]
