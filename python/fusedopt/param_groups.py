"""fusedopt.param_groups(): the two param groups every fine-tuning script
writes by hand, one with weight decay and one without.

    opt = fusedopt.AdamW(fusedopt.param_groups(model, weight_decay=0.1), lr=3e-4)

Decay is a prior on weights that multiply activations; biases and the gains
of normalisation layers only shift and scale, and decaying them hurts (BERT's
optimizer excluded "bias" and "LayerNorm"; GPT-2/nanoGPT excludes every
tensor of fewer than 2 dims). The groups are plain dicts, so every optimizer
takes them, fusedopt's or torch's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

# Normalisation layers by class (their weight and bias are gains and shifts).
# A module of any other class whose name ends in "Norm" (RMSNorm of a model
# library, T5LayerNorm, LlamaRMSNorm, ...) counts too.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*, Lazy*
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: Iterable[str] = (),
    *,
    decay_embeddings: bool = True,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """[{"params": decayed, "weight_decay": weight_decay, **group_options},
        {"params": not decayed, "weight_decay": 0.0, **group_options}]

    Not decayed: every bias (a parameter named "bias"),
    every parameter of a normalisation module (NORM_TYPES, or a class whose
    name ends in "Norm"), the weights of nn.Embedding/EmbeddingBag when
    decay_embeddings=False, and every parameter whose qualified name
    (model.named_parameters()) matches a regular expression of `no_decay`
    (re.search: "bias" matches any name containing it, r"\\.pos_emb$" one).
    A parameter tied to several modules (a shared embedding and output
    projection) is listed once, and is not decayed if any of its owners says
    so. Parameters with requires_grad=False are left out. `group_options`
    (lr, betas, ...) go into both groups. An empty group is dropped, so the
    result may hold one group.
    """
    patterns = [re.compile(p) for p in no_decay]
    by_id: dict[int, Any] = {}  # first-seen order: the order of model.named_parameters()
    exempt: set[int] = set()
    # remove_duplicate=False: a tied parameter shows up under every module that owns it.
    for module_name, module in model.named_modules(remove_duplicate=False):
        module_exempt = _is_norm(module) or (
            not decay_embeddings and isinstance(module, EMBEDDING_TYPES)
        )
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if not param.requires_grad:
                continue
            by_id.setdefault(id(param), param)
            local = name.rsplit(".", 1)[-1]
            if module_exempt or local == "bias" or any(p.search(name) for p in patterns):
                exempt.add(id(param))
    decayed = [p for i, p in by_id.items() if i not in exempt]
    kept = [p for i, p in by_id.items() if i in exempt]
    groups = [
        {"params": decayed, "weight_decay": weight_decay, **group_options},
        {"params": kept, "weight_decay": 0.0, **group_options},
    ]
    return [g for g in groups if g["params"]]
