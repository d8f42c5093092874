from hypothesis import given, strategies as st

from actors.channel_shard import batches
from policy.types import Content, DeliveryTask


def task(i: int, address: str, subject: str = "s") -> DeliveryTask:
    return DeliveryTask(f"n{i}", f"u{i}", "email", "marketing", address, Content(subject=subject, text="t"))


def test_groups_by_content_and_size():
    tasks = [task(i, f"a{i}@x.test", "A" if i % 2 else "B") for i in range(10)]
    out = batches(tasks, 3)
    assert all(len(b) <= 3 for b in out)
    assert all(len({t.content.subject for t in b}) == 1 for b in out)
    assert sorted(t.notification_id for b in out for t in b) == sorted(t.notification_id for t in tasks)


def test_an_address_never_twice_in_a_batch():
    tasks = [task(i, "same@x.test") for i in range(3)] + [task(9, "other@x.test")]
    out = batches(tasks, 1000)
    assert len(out) == 3
    assert all(len({t.address for t in b}) == len(b) for b in out)


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from("AB")), max_size=60), st.integers(1, 7))
def test_every_task_once_and_every_batch_valid(spec, size):
    tasks = [task(i, f"{a}@x.test", subject) for i, (a, subject) in enumerate(spec)]
    out = batches(tasks, size)
    flat = [t.notification_id for b in out for t in b]
    assert sorted(flat) == sorted(t.notification_id for t in tasks)
    for b in out:
        assert 0 < len(b) <= size
        assert len({t.address for t in b}) == len(b)
        assert len({t.content.subject for t in b}) == 1


def test_mixed_contents_share_a_batch_when_the_providers_store_each_tasks_own():
    tasks = [DeliveryTask(f"n{i}", f"u{i}", "in_app", "messages", "", Content(subject=f"s{i}")) for i in range(250)]
    out = batches(tasks, 100, mixed=True)
    assert [len(b) for b in out] == [100, 100, 50]
    assert [t.notification_id for b in out for t in b] == [t.notification_id for t in tasks]
    assert len(batches(tasks, 100)) == 250  # one content per batch otherwise


def test_mixed_batches_keep_urgent_tasks_apart():
    tasks = [DeliveryTask(f"n{i}", f"u{i}", "in_app", "messages", "", Content(subject=f"s{i}"),
                          "critical" if i % 3 == 0 else "normal") for i in range(30)]
    out = batches(tasks, 100, mixed=True)
    assert sorted(len(b) for b in out) == [10, 20]
    assert all(len({t.priority for t in b}) == 1 for b in out)
