"""What an engine can do, named once: engines declare a set of these, requests name the ones they need."""

from __future__ import annotations

from typing import Literal, get_args

from mechscope.engine.errors import MechscopeError

Capability = Literal[
    "run",                 # one forward with interventions and views; validate
    "sweep",               # single-prompt patching sweeps (head, attn, mlp, resid, AtP)
    "generate",            # token-by-token generation under interventions
    "vectors",             # build, add and remove named steering vectors
    "reference_prompts",   # set the prompts mean ablation averages over
    "tokenizer",           # tokenize locally (template prompt sets are built with it)
    "prompt_sets",         # batched runs and sweeps over a prompt set
    "estimates",           # attribution estimates (AtP*, GradDrop, EAP-IG) over a set
    "head_detectors",      # induction / previous-token / duplicate / sink scores per head
    "massive_activations", # the largest residual activations over a set of prompts
    "features",            # read sparse autoencoder features at a site
    "attention_inputs",    # patch heads' queries, keys and values; path patching
    "forward",             # the engine takes whole requests and runs them elsewhere (a server)
]

ALL_CAPABILITIES: frozenset[str] = frozenset(get_args(Capability))
# What an engine running the model in this process offers: everything but forwarding.
LOCAL_CAPABILITIES: frozenset[str] = ALL_CAPABILITIES - {"forward"}

# One line each, for refusals: "this engine cannot <describe>".
DESCRIPTIONS: dict[str, str] = {
    "run": "run the model with interventions",
    "sweep": "run patching sweeps",
    "generate": "generate text",
    "vectors": "build or hold steering vectors",
    "reference_prompts": "set reference prompts for mean ablation",
    "tokenizer": "tokenize locally",
    "prompt_sets": "run prompt sets",
    "estimates": "compute attribution estimates",
    "head_detectors": "score heads with detectors",
    "massive_activations": "find massive activations",
    "features": "read SAE features",
    "attention_inputs": "patch attention queries, keys and values",
    "forward": "forward whole requests to a server",
}


class MissingCapability(MechscopeError):
    """A request needs something the engine does not offer; refused before anything runs."""

    def __init__(self, capability: str, engine_name: str) -> None:
        self.capability = capability
        what = DESCRIPTIONS.get(capability, capability)
        super().__init__(f"{engine_name} cannot {what} (capability '{capability}')")
