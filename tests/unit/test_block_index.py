"""BlockIndex alone: the tree, its recency order, branch flags and the invariants it checks."""

from hf_hybrid_cache.store.block_index import BlockIndex


def chain(index, keys, parent=None):
    blocks = []
    for page_id, key in enumerate(keys):
        parent = index.add(key, parent, page_id)
        blocks.append(parent)
    return blocks


def test_match_follows_the_longest_leading_run():
    index = BlockIndex()
    chain(index, [b"a", b"b", b"c"])
    assert [block.key for block in index.match([b"a", b"b", b"x", b"c"])] == [b"a", b"b"]
    assert index.match([b"x"]) == []


def test_depths_children_and_branch_points():
    index = BlockIndex()
    a, b = chain(index, [b"a", b"b"])
    assert (a.depth, b.depth, a.num_children, a.branched) == (1, 2, 1, False)
    c = index.add(b"c", a, page_id=9)
    assert a.num_children == 2 and a.branched
    index.remove(c)
    index.remove(b)
    assert a.num_children == 0 and a.branched  # a former branch point stays one
    assert index.problems() == []


def test_touch_keeps_parents_more_recent_than_children():
    index = BlockIndex()
    a, b = chain(index, [b"a", b"b"])
    other = index.add(b"o", None, page_id=5)
    index.touch([a, b])
    assert index.keys() == [b"o", b"b", b"a"] and a.page_used == b.page_used == index.clock
    index.touch([other])
    assert index.keys() == [b"b", b"a", b"o"]
    assert index.problems() == []


def test_problems_name_what_is_broken():
    index = BlockIndex()
    a, b = chain(index, [b"a", b"b"])  # added in order: the child is more recent than its parent
    a.num_children = 3
    b.num_pins = -1
    problems = " ".join(index.problems())
    assert "more recently used than its parent" in problems
    assert "counts 3 children, has 1" in problems and "num_pins -1" in problems
