"""The pseudo stages' shards (ovis.pseudo.shards): which images a shard owns, its progress file, the merge."""

from __future__ import annotations

import json

from ovis.pseudo.shards import Sharding

IDS = [5, 3, 9, 1, 7]


def _finish(sharding: Sharding, index: int) -> None:
    part = sharding.shard(index)
    part.finish({i: {"image_id": i, "value": i * 10} for i in part.image_ids})


def test_shards_own_every_nth_image_and_merge_once_all_are_finished_for_the_same_key(tmp_path):
    sharding = Sharding(tmp_path, "things", 2, "key-a", IDS)
    assert [sharding.shard(s).image_ids for s in (0, 1)] == [[5, 9, 7], [3, 1]]
    assert sharding.shard(1).path == tmp_path / "things.1-of-2.json"
    _finish(sharding, 1)
    assert sharding.records() is None and sharding.unfinished() == [0]
    _finish(Sharding(tmp_path, "things", 2, "key-b", IDS), 0)  # written under another key: not shard 0 of key-a
    assert sharding.records() is None and sharding.unfinished() == [0]
    _finish(sharding, 0)
    assert sharding.unfinished() == []
    assert sharding.records() == {i: {"image_id": i, "value": i * 10} for i in IDS}
    # another image list (e.g. another pseudo.max_images) does not take these files either
    assert Sharding(tmp_path, "things", 2, "key-a", IDS[:3]).unfinished() == [0, 1]


def test_progress_resumes_after_the_last_intact_line_and_only_for_the_same_key_and_images(tmp_path):
    part = Sharding(tmp_path, "things", 1, "key-a", IDS).shard(0)
    assert part.read_progress() == {}
    part.begin({})
    part.append([{"image_id": 5, "value": 50}, {"image_id": 3, "value": 30}])
    with open(part.progress_path, "a") as f:
        f.write('{"image_id": 9, "val')  # torn by a crash
    done = part.read_progress()
    assert done == {5: {"image_id": 5, "value": 50}, 3: {"image_id": 3, "value": 30}}
    part.begin(done)  # the torn line goes, so that appends follow an intact one
    assert [json.loads(line)["image_id"] for line in part.progress_path.read_text().splitlines()[1:]] == [5, 3]
    messages: list[str] = []
    assert Sharding(tmp_path, "things", 1, "key-b", IDS).shard(0).read_progress(messages.append) == {}
    assert messages and "starting over" in messages[0]
    part.finish({**done, **{i: {"image_id": i, "value": 0} for i in (9, 1, 7)}})
    assert not part.progress_path.exists() and part.finished() is not None
    part.discard()
    assert not part.path.exists() and part.finished() is None
