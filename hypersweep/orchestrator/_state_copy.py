"""The copy of a trial's state that an asynchronous checkpoint uploads while training goes on.

Copying a state of fresh arrays costs more than the copy itself: every page of new memory is
faulted in and zeroed by the kernel, which on a busy machine made ``copy.deepcopy`` of a
128 MiB state take seconds where copying into existing memory took tens of milliseconds. The
next asynchronous checkpoint waits for the previous upload anyway, so the previous copy's
arrays are free by then: :func:`copy_state` copies each numpy array and torch tensor into the
one at the same place of that previous copy when shape, dtype and device match (numpy and
torch release the GIL while they copy), and falls back to ``copy.deepcopy`` for anything else.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from typing import Any


def copy_state(state: Any, reuse: Any = None) -> Any:
    """A copy of ``state`` that later changes to ``state`` do not reach; ``reuse`` is a
    previous result of this function whose arrays may be overwritten."""
    return _copy(state, reuse, {})


def _copy(state: Any, reuse: Any, memo: dict[int, Any]) -> Any:
    if id(state) in memo:  # the same array twice stays one array, as deepcopy keeps it
        return memo[id(state)]
    kind = type(state)
    if kind is dict or kind is OrderedDict:  # a torch state_dict is an OrderedDict
        olds = reuse if type(reuse) is kind else {}
        copied: Any = kind((key, _copy(value, olds.get(key), memo)) for key, value in state.items())
        if getattr(state, "__dict__", None):  # e.g. a state_dict's _metadata (its versions)
            copied.__dict__.update(copy.deepcopy(state.__dict__, memo))
    elif kind is list or kind is tuple:
        same = type(reuse) is kind and len(reuse) == len(state)
        previous = reuse if same else [None] * len(state)
        copied = kind(_copy(value, old, memo) for value, old in zip(state, previous, strict=True))
    elif _is_ndarray(state):
        copied = _copy_array(state, reuse)
    elif _is_tensor(state):
        copied = _copy_tensor(state, reuse)
    else:
        return copy.deepcopy(state, memo)
    memo[id(state)] = copied
    return copied


def _is_ndarray(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and type(value) is numpy.ndarray and not value.dtype.hasobject


def _copy_array(array: Any, reuse: Any) -> Any:
    import numpy

    if (
        type(reuse) is numpy.ndarray
        and reuse.shape == array.shape
        and reuse.dtype == array.dtype
        and reuse.flags.writeable
        and reuse.base is None  # its own memory, never a view of the state
    ):
        numpy.copyto(reuse, array)
        return reuse
    return array.copy(order="K")


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and type(value) is torch.Tensor and not value.requires_grad


def _copy_tensor(tensor: Any, reuse: Any) -> Any:
    import torch

    if (
        type(reuse) is torch.Tensor
        and reuse.shape == tensor.shape
        and reuse.dtype == tensor.dtype
        and reuse.device == tensor.device
        and reuse.layout == tensor.layout == torch.strided
        and not reuse.requires_grad
    ):
        return reuse.copy_(tensor)
    return tensor.detach().clone()
