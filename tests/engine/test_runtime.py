import os
from types import SimpleNamespace

from convnext.engine.runtime import cap_workers


def test_workers_are_capped_at_this_process_share_of_the_cores_and_the_note_says_so(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    config = SimpleNamespace(workers=8)
    assert cap_workers(config) == "DataLoader workers 8 -> 2: no more than this process's CPU cores"
    assert config.workers == 2
    assert cap_workers(config) is None and config.workers == 2  # already within the cores: nothing to say
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the two cores
    config = SimpleNamespace(workers=4)
    assert cap_workers(config) == "DataLoader workers 4 -> 1: no more than this process's CPU cores"
    assert config.workers == 1
