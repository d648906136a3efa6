"""The advice cache (graft.advisor.advice_cache): keyed by what decides an answer, stored
as the codec's JSON, read back equal; a repeated Advise does not measure again."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from graft.advisor import advice_cache
from graft.advisor.advice import Advice, DeclaredStats
from graft.advisor.advice_cache import AdviceCache, advice_key, advise_cached
from graft.advisor.declared import advise_declared
from graft.config import Config
from graft.data import scan_dataset
from graft_devtools.datasets import write_fashion_mnist_folder


def _declared(per_class: int = 40) -> Advice:
    stats = DeclaredStats(num_classes=3, images_per_class=per_class, similarity_hint=0.2)
    return advise_declared(stats, small_threshold=100, backbone="efficientnet_lite0")


def test_the_key_changes_with_everything_that_decides_the_answer(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    key = advice_key("f" * 64, config, "cpu")
    assert key == advice_key("f" * 64, config, "cpu")  # deterministic
    others = {
        advice_key("e" * 64, config, "cpu"),  # another dataset
        advice_key("f" * 64, config, "cuda"),  # another device
        advice_key("f" * 64, config, "cpu", candidates=["efficientnet_lite1"]),
        advice_key("f" * 64, config, "cpu", max_per_class=7),
        advice_key("f" * 64, config, "cpu", small_threshold=3),
        advice_key("f" * 64, dataclasses.replace(config, advise_max_images=17), "cpu"),
    }
    assert key not in others and len(others) == 6
    # An option equal to its default is the same question.
    assert key == advice_key("f" * 64, config, "cpu", max_per_class=config.advise_max_per_class)
    # Settings that do not change an answer do not change the key.
    assert key == advice_key("f" * 64, dataclasses.replace(config, port=1234), "cpu")


def test_an_entry_reads_back_equal_and_marked(tmp_path: Path) -> None:
    cache = AdviceCache(tmp_path)
    advice = _declared()
    assert cache.get("k") is None
    cache.put("k", advice)
    back = cache.get("k")
    assert back is not None and back.from_cache
    assert dataclasses.replace(back, from_cache=False) == advice
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]  # no temporary left behind


def test_an_unreadable_entry_is_a_miss_and_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = AdviceCache(tmp_path)
    (tmp_path / "k.json").write_text('{"version": 999, "advice": {}}')
    assert cache.get("k") is None
    assert not (tmp_path / "k.json").exists()
    assert "unreadable" in caplog.text


def test_least_recently_used_entries_are_evicted(tmp_path: Path) -> None:
    cache = AdviceCache(tmp_path, max_entries=2)
    advice = _declared()
    for i, key in enumerate(("a", "b")):
        cache.put(key, advice)
        t = time.time() - 100 + i
        os.utime(tmp_path / f"{key}.json", (t, t))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", advice)
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["a", "c"]


def test_a_repeated_advise_answers_from_the_cache_without_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_fashion_mnist_folder(tmp_path / "data", per_class=3, classes=(0, 1, 2))
    ds = scan_dataset(folder)
    calls: list[dict[str, object]] = []

    def measuring(ds, **options):  # type: ignore[no-untyped-def]
        calls.append(options)
        return _declared(per_class=len(ds.samples))

    monkeypatch.setattr(advice_cache, "advise_dataset", measuring)
    config = Config(data_dir=tmp_path / "graft")
    first = advise_cached(ds, config=config, max_per_class=2)
    again = advise_cached(scan_dataset(folder), config=config, max_per_class=2)
    assert len(calls) == 1 and not first.from_cache and again.from_cache
    assert dataclasses.replace(again, from_cache=False) == first
    # Another question about the same data measures.
    advise_cached(ds, config=config, max_per_class=1)
    assert len(calls) == 2
