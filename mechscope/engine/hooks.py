"""Hooks are global state on the model: install them only inside `installed()`, which always removes them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from torch import nn

from mechscope.engine.attention import AttentionControl


@dataclass
class Hook:
    """One registration: a forward pre-hook (`pre`, called with (module, args, kwargs)), a forward hook
    (`fwd`, called with (module, args, output)), an attention control attached to an attention module
    (`attn`), or a query / key / value edit of an attention module (`qkv`, `fn` an
    `attention.QKVEdit`; several apply in the order installed)."""

    where: Literal["pre", "fwd", "attn", "qkv"]
    module: nn.Module
    fn: Callable | None = None
    control: AttentionControl | None = None


@contextlib.contextmanager
def installed(hooks: list[Hook]) -> Iterator[None]:
    """Register `hooks` for the duration of the block; every handle and control is removed in `finally`,
    whether the block returns, raises or is cancelled."""
    handles = []
    controlled: list[nn.Module] = []
    edited: list[tuple[nn.Module, Callable]] = []
    try:
        for hook in hooks:
            if hook.where == "pre":
                assert hook.fn is not None  # pre and fwd hooks carry a function
                handles.append(hook.module.register_forward_pre_hook(hook.fn, with_kwargs=True))
            elif hook.where == "fwd":
                assert hook.fn is not None
                handles.append(hook.module.register_forward_hook(hook.fn))
            elif hook.where == "qkv":
                assert hook.fn is not None
                module = cast(Any, hook.module)
                if getattr(module, "_mechscope_qkv", None) is None:
                    module._mechscope_qkv = []
                module._mechscope_qkv.append(hook.fn)
                edited.append((hook.module, hook.fn))
            else:
                cast(Any, hook.module)._mechscope_control = hook.control  # a plain attribute, not a submodule
                controlled.append(hook.module)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in controlled:
            cast(Any, module)._mechscope_control = None
        for module, fn in edited:
            remaining = [f for f in cast(Any, module)._mechscope_qkv if f is not fn]
            cast(Any, module)._mechscope_qkv = remaining or None


def count_hooks(model: nn.Module) -> int:
    """Forward hooks, pre-hooks and attention controls currently on `model` (0 when nothing leaked)."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += int(getattr(module, "_mechscope_control", None) is not None)
        total += int(getattr(module, "_mechscope_qkv", None) is not None)
    return total
