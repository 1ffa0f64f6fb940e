import os

from convnext.engine.runtime import cap_workers, capped_workers


def test_workers_are_capped_at_this_process_share_of_the_cores_and_the_note_says_so(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert capped_workers(8) == (2, "DataLoader workers 8 -> 2: no more than this process's CPU cores")
    assert capped_workers(2) == (2, None) and capped_workers(0) == (0, None)
    assert capped_workers(-1) == (-1, None)  # not ours to judge: the caller refuses it in its own words
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the two cores
    assert capped_workers(4) == (1, "DataLoader workers 4 -> 1: no more than this process's CPU cores")


def test_cap_workers_lowers_the_config_and_returns_the_line(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    config = SimpleNamespace(workers=8)
    assert cap_workers(config) == "DataLoader workers 8 -> 2: no more than this process's CPU cores"
    assert config.workers == 2 and cap_workers(config) is None and config.workers == 2
