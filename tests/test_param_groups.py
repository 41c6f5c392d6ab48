"""fusedopt.param_groups(): the decay / no-decay groups of fine-tuning scripts."""

from __future__ import annotations

import fusedopt
import pytest
import torch
from torch import nn


class RMSNorm(nn.Module):
    """A model library's own norm: only its class name says what it is."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TinyLM(nn.Module):
    """Embedding tied to the output projection, attention-ish linears, norms of
    every kind, a frozen parameter and a positional embedding parameter."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Parameter(torch.zeros(4, dim))
        self.proj = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim)
        self.rms = RMSNorm(dim)
        self.gn = nn.GroupNorm(2, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.inorm = nn.InstanceNorm1d(dim, affine=True)
        self.frozen = nn.Linear(dim, dim, bias=False).requires_grad_(False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied

    def forward(self, ids):
        x = self.embed(ids) + self.pos_emb[: ids.shape[-1]]
        x = self.rms(self.ln(self.proj(x)))
        x = self.bn(x.transpose(1, 2)).transpose(1, 2)
        x = self.gn(x.transpose(1, 2)).transpose(1, 2)
        x = self.inorm(x.transpose(1, 2)).transpose(1, 2)
        return self.lm_head(self.frozen(x))


def names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_two_groups_of_a_transformer_like_model():
    model = TinyLM()
    decay, no_decay = fusedopt.param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert names(model, decay) == {"embed.weight", "pos_emb", "proj.weight"}
    assert names(model, no_decay) == {
        "proj.bias",
        "ln.weight",
        "ln.bias",
        "rms.weight",
        "gn.weight",
        "gn.bias",
        "bn.weight",
        "bn.bias",
        "inorm.weight",
        "inorm.bias",
    }
    every = [p for g in (decay, no_decay) for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]  # the tied one once
    assert len(every) == len({id(p) for p in every}) == len(trainable)
    assert id(model.frozen.weight) not in {id(p) for p in every}  # frozen: left out
    assert all(p.requires_grad for p in every)


def test_embeddings_and_patterns_can_join_the_no_decay_group():
    model = TinyLM()
    decay, no_decay = fusedopt.param_groups(
        model, 0.1, no_decay=[r"^pos_emb$"], decay_embeddings=False
    )
    assert names(model, decay) == {"proj.weight"}
    # Tied: the embedding's exemption holds for lm_head.weight too; listed once.
    assert {"embed.weight", "pos_emb"} <= names(model, no_decay)
    assert sum(p is model.embed.weight for p in no_decay["params"]) == 1


def test_a_tied_weight_is_exempt_if_any_owner_is():
    """The exemption of the tied parameter comes through the lm_head's owner
    name too: a pattern on "lm_head" alone removes the shared weight from decay."""
    model = TinyLM()
    groups = fusedopt.param_groups(model, 0.1, no_decay=["lm_head"])
    decay = next(g for g in groups if g["weight_decay"] == 0.1)
    assert all(p is not model.embed.weight for p in decay["params"])


def test_group_options_and_empty_groups():
    model = nn.Sequential(nn.LayerNorm(4))
    (only,) = fusedopt.param_groups(model, 0.1, lr=1e-3, betas=(0.9, 0.95))
    assert only["weight_decay"] == 0.0 and only["lr"] == 1e-3 and only["betas"] == (0.9, 0.95)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: fusedopt.AdamW(g, lr=1e-2),
        lambda g: fusedopt.SGD(g, lr=1e-2, momentum=0.9),
        lambda g: fusedopt.HFAdamW(g, lr=1e-2),
        lambda g: torch.optim.AdamW(g, lr=1e-2),
    ],
    ids=["AdamW", "SGD", "HFAdamW", "torch.AdamW"],
)
def test_every_optimizer_takes_the_groups_and_only_decays_the_first(make):
    """One step with zero grads: only the decayed group's weights shrink."""
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():
        model.ln.weight.fill_(2.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make(fusedopt.param_groups(model, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["ln.weight"], before["ln.weight"])
    assert torch.equal(after["proj.bias"], before["proj.bias"])
    assert (after["proj.weight"].abs() < before["proj.weight"].abs()).any()
