"""Resuming where fewer GPUs are visible than the checkpoint was written with."""

from __future__ import annotations

import pytest
import torch

from interlude.artifact import rng_state, set_rng_state


def test_cuda_states_of_missing_devices_are_dropped(monkeypatch):
    """A checkpoint from 4 GPUs resumed on 2: devices 0 and 1 get their saved states, the
    other two are ignored (torch's ``set_rng_state_all`` would fail on device 2)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((device, int(state[0]))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: pytest.fail("set_rng_state_all restores every saved device"))
    cpu = torch.get_rng_state()
    set_rng_state({"torch": cpu, "cuda": [torch.full((8,), d, dtype=torch.uint8)
                                          for d in range(4)]})
    assert restored == [(0, 0), (1, 1)]
    assert torch.equal(torch.get_rng_state(), cpu)


def test_more_devices_than_saved_keep_their_state(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append(device))
    set_rng_state({"torch": torch.get_rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)]})
    assert restored == [0]


@pytest.mark.parametrize("state", [None, {"cuda": []}, {"torch": [1, 2]},
                                   {"torch": torch.get_rng_state(), "cuda": "x"}])
def test_malformed_rng_state_is_a_type_error(state):
    """Trainer.restore turns this into a one-line CheckpointError."""
    with pytest.raises(TypeError, match="rng state"):
        set_rng_state(state)


def test_round_trip_on_this_machine():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
