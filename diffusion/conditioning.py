"""Vector condition embeddings added to the UNet's time embedding, with learned nulls for guidance dropout."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from diffusion.network_inputs import condition_drop, positive_int


class ConditionEmbedding(nn.Module):
    """Base of every vector condition: an embedding of the value plus a learned null used where it is dropped."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.null_embedding = nn.Parameter(torch.randn(dim) * 0.02)

    def embed(self, value: Tensor) -> Tensor:
        """Embed a batch of valid condition values to (B, dim)."""
        raise NotImplementedError

    def neutral_value(self, value: Tensor) -> Tensor:
        """A harmless stand-in for a dropped row's value (keeps NaNs in dropped rows out of the gradients)."""
        return torch.zeros_like(value)

    def forward(self, value: Tensor, use_null: Tensor) -> Tensor:
        if use_null.dim() != 1 or use_null.dtype != torch.bool:
            raise ValueError(
                f"use_null must be a bool tensor of shape (B,), got {use_null.dtype} {tuple(use_null.shape)}"
            )
        if value.shape[0] != use_null.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: value has batch size {value.shape[0]}, expected {use_null.shape[0]}"
            )
        row_mask = use_null.view(-1, *([1] * (value.dim() - 1)))
        value = torch.where(row_mask, self.neutral_value(value), value)
        embedded = self.embed(value)
        null = self.null_embedding.to(embedded.dtype).expand_as(embedded)
        return torch.where(rearrange(use_null, "b -> b 1"), null, embedded)


class ScoreEmbedding(ConditionEmbedding):
    """Continuous condition in [0, 1] (mitosis score): Linear(1, dim) -> SiLU -> Linear(dim, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.mlp = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def embed(self, value: Tensor) -> Tensor:
        if value.dim() == 1:
            value = rearrange(value, "b -> b 1")
        if value.dim() != 2 or value.shape[1] != 1:
            raise ValueError(f"score must have shape (B,) or (B, 1), got {tuple(value.shape)}")
        return self.mlp(value.to(self.mlp[0].weight.dtype))


class LabelEmbedding(ConditionEmbedding):
    """Discrete condition (class or cluster id in 0..num_labels-1): an embedding table."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__(dim)
        self.num_labels = positive_int("num_labels (needed by the label condition)", num_labels)
        self.table = nn.Embedding(num_labels, dim)

    def embed(self, value: Tensor) -> Tensor:
        if value.dim() != 1:
            raise ValueError(f"label must have shape (B,), got {tuple(value.shape)}")
        value = value.long()
        if bool(((value < 0) | (value >= self.num_labels)).any()):
            raise ValueError(f"labels must lie in 0..{self.num_labels - 1}, got {sorted(set(value.tolist()))}")
        return self.table(value)


def _style(dim: int, num_labels: int, settings: Mapping[str, Any] | None) -> ConditionEmbedding:
    from diffusion.style import StyleEmbedding  # the style encoder module builds on ConditionEmbedding above

    return StyleEmbedding(dim, **dict(settings or {}))


# Each vector condition: (embedding width, number of labels, its settings) -> its embedding.
CONDITION_EMBEDDINGS: dict[str, Callable[[int, int, Mapping[str, Any] | None], ConditionEmbedding]] = {
    "score": lambda dim, num_labels, settings: ScoreEmbedding(dim),
    "label": lambda dim, num_labels, settings: LabelEmbedding(dim, num_labels),
    "style": _style,
}


def _resolve_drop_prob(conditions: Sequence[str], drop_prob: float | Mapping[str, float]) -> dict[str, float]:
    """One validated dropout probability per condition."""
    if isinstance(drop_prob, Mapping):
        unknown = sorted(set(drop_prob) - set(conditions))
        if unknown:
            raise ValueError(
                f"drop_prob names conditions the model does not use: {unknown}; conditions are {list(conditions)}"
            )
        missing = [name for name in conditions if name not in drop_prob]
        if missing:
            raise ValueError(f"drop_prob gives no probability for conditions {missing}")
        resolved = {name: float(drop_prob[name]) for name in conditions}
    else:
        resolved = {name: float(drop_prob) for name in conditions}
    for name, p in resolved.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop_prob for condition '{name}' must lie in [0, 1], got {p}")
    return resolved


class ConditionEmbedder(nn.Module):
    """Sum of the embeddings of the named conditions, each dropped to its null with its own probability in training."""

    def __init__(
        self, conditions: Sequence[str], dim: int, drop_prob: float | Mapping[str, float] = 0.0, num_labels: int = 0,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        conditions = list(conditions)
        if not conditions:
            raise ValueError("conditions must name at least one condition")
        unknown = [name for name in conditions if name not in CONDITION_EMBEDDINGS]
        if unknown:
            raise ValueError(f"unknown conditions {unknown}; known conditions are {sorted(CONDITION_EMBEDDINGS)}")
        if len(set(conditions)) != len(conditions):
            raise ValueError(f"conditions must not repeat a name, got {conditions}")
        self.conditions = conditions
        self.dim = dim
        self.drop_prob = _resolve_drop_prob(conditions, drop_prob)
        settings = settings or {}
        self.embeddings = nn.ModuleDict(
            {name: CONDITION_EMBEDDINGS[name](dim, num_labels, settings.get(name)) for name in conditions}
        )

    def forward(self, cond: Mapping[str, Tensor] | None, batch: int,
                drop_cond: Tensor | Mapping[str, Tensor] | None = None) -> Tensor:
        """drop_cond: rows that use the nulls of every condition, or a mapping name -> rows for that condition."""
        device = self.embeddings[self.conditions[0]].null_embedding.device
        cond = {} if cond is None else cond
        total: Tensor | None = None
        for name in self.conditions:
            module = self.embeddings[name]
            forced = condition_drop(drop_cond, name, batch, device)
            if name not in cond:
                if not bool(forced.all()):
                    raise ValueError(
                        f"condition '{name}' is missing from cond; the model was built with conditions "
                        f"{self.conditions} (pass drop_cond all True for a fully unconditional pass)"
                    )
                embedded = module.null_embedding.expand(batch, -1)
            else:
                use_null = forced
                p = self.drop_prob[name]
                if self.training and p > 0.0:
                    use_null = use_null | (torch.rand(batch, device=device) < p)
                embedded = module(cond[name].to(device), use_null)
            total = embedded if total is None else total + embedded
        return total
