"""collect_inputs: what a module receives inside a model, over a stream of batches.

A forward pre-hook on the module copies its first input (after whatever norm precedes it in the
model) on every forward; the model runs on each batch under torch.no_grad(), and by default stops
as soon as the module has been reached, since nothing after it is needed. The hook is removed
whatever happens. Rows stay on the model's device unless `device` says otherwise.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .module_adapters import unwrap_traced

DEFAULT_MAX_BYTES = 4 << 30


class _Reached(Exception):
    """Raised from the hook to end a forward once the module's input is captured."""


def collect_inputs(model: nn.Module, module, batches: Iterable, *, max_rows: int | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES, outputs: bool = False, stop_early: bool = True,
                   forward: Callable | None = None, device=None):
    """The inputs `module` receives while `model` runs on `batches`, as rows (n, d).

    model       any nn.Module (or an nnsight wrapper of one)
    module      a submodule of `model`, or its name (`model.get_submodule(name)`), e.g. a
                transformer's `model.layers[3].mlp`: its input is the normed residual stream
    batches     an iterable of batches, on the model's device; each is passed as model(**batch) for a
                dict, model(*batch) for a tuple or list, model(batch) otherwise; or by `forward(model, batch)`
    max_rows    stop after this many rows (the last batch is cut); None: every batch
    max_bytes   refuse (MemoryError) to hold more than this many bytes of rows (default 4 GiB)
    outputs     also return what the module returned, as (inputs, outputs)
    stop_early  end each forward right after the module (the rest of the model is not run)
    device      where the rows are kept (default: where the module received them)

    Every leading dimension (batch, position) is flattened into rows; the input's last dimension
    is d. A module called more than once per forward contributes one row block per call when
    stop_early=False (with stop_early, only its first call in each forward is seen).
    """
    model, module = unwrap_traced(model), unwrap_traced(module)  # nnsight wrappers: the modules inside
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(module, str):
        try:
            module = model.get_submodule(module)
        except AttributeError as error:
            raise ValueError(f"model has no submodule named {module!r}: {error}") from None
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module or a submodule name, got {type(module).__name__}")
    if not any(m is module for m in model.modules()):
        raise ValueError(f"module ({type(module).__name__}) is not a submodule of model ({type(model).__name__})")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be a positive int or None, got {max_rows!r}")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be callable as forward(model, batch), got {type(forward).__name__}")

    collected_in: list[torch.Tensor] = []
    collected_out: list[torch.Tensor] = []
    state = {"rows": 0, "bytes": 0}

    def keep(t: torch.Tensor, what: str, store: list) -> None:
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise TypeError(f"the module's {what} is {type(t).__name__}, not a tensor of rows (..., d)")
        rows = t.detach().reshape(-1, t.shape[-1])
        if store is collected_in:
            room = None if max_rows is None else max_rows - state["rows"]
            rows = rows if room is None else rows[:room]
            state["rows"] += rows.shape[0]
        else:  # outputs follow the inputs row for row
            rows = rows[: state["rows"] - sum(r.shape[0] for r in store)]
        state["bytes"] += rows.numel() * rows.element_size()
        if state["bytes"] > max_bytes:
            raise MemoryError(f"collect_inputs would hold more than max_bytes = {max_bytes} bytes of rows "
                              f"({state['rows']} rows of {tuple(rows.shape[1:])} {rows.dtype} so far); "
                              "lower max_rows or raise max_bytes")
        # a copy: the model may change the tensor in place after the module has seen it
        store.append(rows.to(device=device, copy=True) if device is not None else rows.clone())

    def pre_hook(_module, args, kwargs):
        keep(_first_tensor(args, kwargs), "input", collected_in)
        if stop_early and not outputs:
            raise _Reached

    def post_hook(_module, _args, _kwargs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        keep(out, "output", collected_out)
        if stop_early:
            raise _Reached

    handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    if outputs:
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    _run(model, batch, forward)
                except _Reached:
                    pass
                if max_rows is not None and state["rows"] >= max_rows:
                    break
    finally:
        for handle in handles:
            handle.remove()
    if not collected_in:
        raise ValueError("the module was never called while the model ran on the batches "
                         "(no batches, or the module is not on the forward path)")
    inputs = torch.cat(collected_in)
    return (inputs, torch.cat(collected_out)) if outputs else inputs


def _run(model, batch, forward):
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _first_tensor(args, kwargs):
    if args:
        return args[0]
    tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != 1:
        raise TypeError(f"the module was called with no positional input and keyword inputs {sorted(kwargs)}; "
                        "cannot tell which one is its input")
    return tensors[0]
