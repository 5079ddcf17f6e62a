"""Named token positions of a set's rows (IO, S1, S2, END for IOI), a head's attention between them
averaged over the set, and the name-mover and S-inhibition scores computed from it."""

from __future__ import annotations

import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.detectors import direct_logit_effects, head_writes
from mechscope.engine.errors import PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.prompt_sets import ICL_TASKS, PromptSet
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import ROLE_DETECTORS, HeadScores, RoleAttention
from mechscope.engine.set_batches import Batch, encode, forward

IOI_ROLES: tuple[str, ...] = ("IO", "S1", "S2", "END")
INDUCTION_ROLES: tuple[str, ...] = ("A", "B", "END")  # A: the earlier copy of the last token; B: the token after it
ICL_ROLES: tuple[str, ...] = ("QUERY", "END")  # the query word and the final token (the colon)
PLAIN_ROLES: tuple[str, ...] = ("START", "END")

RowRoles = dict[str, int]  # role -> token position in the row's clean prompt


class RoleError(PromptError):
    """A row whose roles cannot be found (a name missing from the prompt, a set of another kind)."""


def template_of(pset: PromptSet) -> str:
    """The template a set was built from ("ioi", "induction", ...), "" for a file."""
    source = pset.source
    return source.removeprefix("template:").split()[0] if source.startswith("template:") else ""


def _mentions(tokenizer, ids: list[int], word: str) -> list[int]:
    """The positions where `word` starts in `ids`: its tokens after a space (" Mary", as the metric
    reads it) or bare ("Mary" at the start of a prompt), whichever way the tokenizer split it."""
    spellings = {tuple(tokenizer(text, add_special_tokens=False).input_ids)
                 for text in (" " + word.strip(), word.strip())}
    return sorted({p for form in spellings if form for p in range(len(ids) - len(form) + 1)
                   if tuple(ids[p:p + len(form)]) == form})


def _ioi_roles(tokenizer, ids: list[int], target: str, foil: str, where: str) -> RowRoles:
    io, s = _mentions(tokenizer, ids, target), _mentions(tokenizer, ids, foil)
    if not io:
        raise RoleError(f"{where}: the indirect object {target!r} is not in the prompt")
    if len(s) < 2:
        raise RoleError(f"{where}: the subject {foil!r} is not mentioned twice in the prompt")
    return {"IO": io[0], "S1": s[0], "S2": s[1], "END": len(ids) - 1}


def _induction_roles(ids: list[int], where: str) -> RowRoles:
    end = len(ids) - 1
    earlier = [p for p in range(end - 1, -1, -1) if ids[p] == ids[end]]
    if not earlier:
        raise RoleError(f"{where}: the last token does not occur earlier in the prompt")
    return {"A": earlier[0], "B": earlier[0] + 1, "END": end}


def role_positions(engine: ResidentModel, pset: PromptSet) -> tuple[tuple[str, ...], list[RowRoles]]:
    """The role names of the set and each row's role positions in its clean prompt (as
    `engine.tokenize` reads it). IOI sets (a template "ioi", or any set whose every row mentions its
    target once and its foil twice): IO, S1, S2, END; induction: A, B, END; in-context tasks: QUERY,
    END; anything else: START, END."""
    tokenized = [engine.tokenize(row.clean)[0] for row in pset.rows]
    kind = template_of(pset)
    where = [f"row {i + 1}" for i in range(len(pset))]
    if kind == "induction":
        return INDUCTION_ROLES, [_induction_roles(ids, w) for ids, w in zip(tokenized, where)]
    if kind in ICL_TASKS:
        return ICL_ROLES, [{"QUERY": max(len(ids) - 2, 0), "END": len(ids) - 1} for ids in tokenized]
    rows = pset.rows
    if kind == "ioi" or all(row.target and row.foil for row in rows):
        try:
            return IOI_ROLES, [_ioi_roles(engine.tokenizer, ids, row.target, row.foil, w)
                               for ids, row, w in zip(tokenized, rows, where)]
        except RoleError:
            if kind == "ioi":
                raise
    return PLAIN_ROLES, [{"START": 0, "END": len(ids) - 1} for ids in tokenized]


def _patterns(engine: ResidentModel, batch: Batch, layers: list[int], heads: tuple[int, ...],
              extra: list[Hook] | None = None) -> list[torch.Tensor]:
    """[head, row, query, key] patterns of `heads` at each of `layers` (padded coordinates)."""
    a = engine.adapter
    controls = {layer: AttentionControl(record_heads=heads) for layer in layers}
    hooks = [Hook("attn", a.layer_module(layer, "attn"), control=control) for layer, control in controls.items()]
    forward(engine, batch, hooks + (extra or []))
    return [torch.stack([controls[layer].patterns[h].float() for h in heads]) for layer in layers]


def _gather(pattern: torch.Tensor, batch: Batch, roles: tuple[str, ...], rows: list[RowRoles]) -> torch.Tensor:
    """[head, row, query, key] -> [head, row, role, role]: the weights between each row's role positions."""
    index = torch.tensor([[batch.offsets[r] + row[name] for name in roles] for r, row in enumerate(rows)],
                         device=pattern.device)  # [row, role]
    picked = pattern[:, torch.arange(len(rows), device=pattern.device)[:, None], index]  # [head, row, role, key]
    return torch.gather(picked, 3, index[None, :, None, :].expand(pattern.shape[0], -1, len(roles), -1))


def set_attention(engine: ResidentModel, pset: PromptSet, layer: int, head: int) -> RoleAttention:
    """Head `layer`.`head`'s attention from each role to each role, mean and spread over the set's
    clean prompts (batched with left padding; padding keys get no weight)."""
    a = engine.adapter
    if not 0 <= layer < a.n_layers:
        raise PromptError(f"layer {layer} is out of range 0..{a.n_layers - 1}")
    if not 0 <= head < a.n_heads:
        raise PromptError(f"head {head} is out of range 0..{a.n_heads - 1}")
    with engine.guard(), torch.no_grad():
        roles, rows = role_positions(engine, pset)
        batch = encode(engine, pset.column("clean"))
        table = _gather(_patterns(engine, batch, [layer], (head,))[0], batch, roles, rows)[0]  # [row, role, role]
    values = table.double().cpu().numpy()
    return RoleAttention(pset.name, layer, head, roles, values.mean(0), values.std(0), len(rows))


def role_head_scores(engine: ResidentModel, pset: PromptSet) -> HeadScores:
    """Name-mover and S-inhibition grids on an IOI set (see `results.ROLE_DEFINITIONS`): attention
    END->IO and END->S2 of every head, and each head's direct effect at END on logit(IO) - logit(S)."""
    a = engine.adapter
    with engine.guard(), torch.no_grad():
        roles, rows = role_positions(engine, pset)
        if roles != IOI_ROLES:
            raise RoleError(f"name-mover and S-inhibition scores need an IOI set (rows naming IO, S1, S2); "
                            f"{pset.name!r} has roles {', '.join(roles)}")
        batch = encode(engine, pset.column("clean"))
        n = batch.rows
        picks = torch.arange(n, device=batch.readout.device)
        z: list[torch.Tensor | None] = [None] * a.n_layers
        kept: dict[str, torch.Tensor] = {}

        def keep_z(layer: int):
            def hook(module, args, kwargs):
                z[layer] = args[0][picks, batch.readout].detach()  # [row, head*d_head] at END
            return hook

        def keep_final(module, args, kwargs):
            kept["final"] = args[0][picks, batch.readout].detach()  # [row, d_model]

        extra = [Hook("pre", a.o_proj(layer), keep_z(layer)) for layer in range(a.n_layers)]
        extra.append(Hook("pre", a.final_norm, keep_final))
        patterns = _patterns(engine, batch, list(range(a.n_layers)), tuple(range(a.n_heads)), extra)
        io = IOI_ROLES.index("IO")
        attention = torch.stack([_gather(p, batch, roles, rows) for p in patterns])  # [layer, head, row, role, role]
        end = attention[:, :, :, IOI_ROLES.index("END")]  # [layer, head, row, role]
        io_ids = [int(batch.ids[r, batch.offsets[r] + row["IO"]]) for r, row in enumerate(rows)]
        s_ids = [int(batch.ids[r, batch.offsets[r] + row["S1"]]) for r, row in enumerate(rows)]
        logit = torch.zeros(a.n_layers, a.n_heads, n)
        for layer in range(a.n_layers):
            layer_z = z[layer]
            assert layer_z is not None
            for r in range(n):
                writes = head_writes(engine, layer, layer_z[r][None])  # [head, 1, d_model]
                chosen, _ = direct_logit_effects(engine, kept["final"][r][None], writes, [io_ids[r], s_ids[r]])
                logit[layer, :, r] = (chosen[:, 0, 0] - chosen[:, 0, 1]).cpu()
    scores = {"name_mover": end[..., io].mean(-1), "name_mover_logit": logit.mean(-1),
              "s_inhibition": end[..., IOI_ROLES.index("S2")].mean(-1)}
    return HeadScores({name: scores[name].double().cpu().numpy() for name in ROLE_DETECTORS})
