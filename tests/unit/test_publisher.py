"""The web process's background publisher of confirmation sends (tasks/publisher.py),
against Celery's in-memory broker, whose messages this process can read back."""

import logging

import pytest

from service import create_app
from service.logs import request_id_var
from tasks.publisher import MAX_IDS_PER_TASK


@pytest.fixture
def app(tmp_path):
    return create_app({"SECRET_KEY": "publisher-test-key-long-enough", "INSTANCE_PATH": str(tmp_path),
                       "CELERY_BROKER_URL": "memory://", "SEED_DEMO_TOPICS": "false"})


def _published(app) -> list[tuple[str, list[int], list[str] | None]]:
    messages = []
    with app.extensions["celery"].connection_for_read() as connection:
        queue = connection.SimpleQueue("celery")
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                return messages
            (ids,), kwargs, _ = message.payload
            messages.append((message.headers["task"], ids, kwargs.get("request_ids")))
            message.ack()


def test_ids_that_arrive_together_go_as_one_task_each_with_its_request_id(app):
    publisher = app.extensions["publisher"]
    token = request_id_var.set("req-first")
    publisher.submit([1, 2, 3])
    request_id_var.set("req-second")
    publisher.submit([4])
    request_id_var.reset(token)
    publisher.close()
    assert _published(app) == [("newsletter.send_delivery_batch", [1, 2, 3, 4],
                                ["req-first"] * 3 + ["req-second"])]


def test_a_long_queue_is_split_into_tasks_of_the_largest_size(app):
    publisher = app.extensions["publisher"]
    publisher.submit(range(MAX_IDS_PER_TASK + 5))
    publisher.close()
    published = _published(app)
    assert [ids for _, ids, _ in published] == [list(range(MAX_IDS_PER_TASK)),
                                               list(range(MAX_IDS_PER_TASK, MAX_IDS_PER_TASK + 5))]
    assert all(request_ids is None for _, _, request_ids in published)  # no request, no ids to carry


def test_a_broker_that_is_down_is_logged_never_raised_and_nothing_piles_up(tmp_path, caplog):
    app = create_app({"SECRET_KEY": "publisher-test-key-long-enough", "INSTANCE_PATH": str(tmp_path),
                      "CELERY_BROKER_URL": "redis://127.0.0.1:1/0", "SEED_DEMO_TOPICS": "false"})
    publisher = app.extensions["publisher"]
    with caplog.at_level(logging.WARNING):
        publisher.submit(range(MAX_IDS_PER_TASK + 100))
        publisher.close(timeout=30)
    # The first task's publish fails; the ids queued behind it are dropped, not kept waiting.
    assert f"a batch of {MAX_IDS_PER_TASK} deliveries" in caplog.text
    assert "broker unavailable: 100 more confirmation(s) left for the sweep" in caplog.text


def test_a_publisher_whose_thread_has_stopped_starts_it_again(app):
    publisher = app.extensions["publisher"]
    publisher.submit([1])
    publisher.close()
    publisher.submit([2])
    publisher.close()
    assert [ids for _, ids, _ in _published(app)] == [[1], [2]]
