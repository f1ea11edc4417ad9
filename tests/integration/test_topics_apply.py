"""`topics plan|apply` against a real broker: creates exactly the declared topics, is idempotent, never alters,
refuses broken co-partitioning and reports drift.
"""

from __future__ import annotations

import re

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_app.domain.errors import TopicPlanError
from stream_app.edges import topics_admin
from stream_app.edges.topics_admin import TopicPlan, load_topic_plan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def topics_under(bootstrap: str, prefix: str) -> dict[str, int]:
    """Partition count of every topic whose name starts with `prefix` (all-topic metadata: creates nothing)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {
            t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if t["topic"].startswith(prefix)
        }
    finally:
        await admin.close()


async def configs_of(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    return {res[3]: {e[0]: e[1] for e in res[4]} for response in responses for res in response.resources}


async def create(bootstrap: str, name: str, partitions: int, config: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
    finally:
        await admin.close()


@pytest.fixture
def plan(topic_prefix: str) -> TopicPlan:
    return load_topic_plan(prefix=topic_prefix, app_id="it-app")


async def test_plan_changes_nothing_and_apply_creates_exactly_the_declared_topics(
    bootstrap: str, topic_prefix: str, plan: TopicPlan
) -> None:
    planned = await topics_admin.plan(bootstrap, plan, client_kwargs={})
    assert [s.action for s in planned.topics] == ["create"] * len(plan)
    assert await topics_under(bootstrap, topic_prefix) == {}  # plan is read-only

    applied = await topics_admin.apply(bootstrap, plan, client_kwargs={})
    assert [s.action for s in applied.topics] == ["created"] * len(plan)
    p = topic_prefix
    assert await topics_under(bootstrap, topic_prefix) == {
        f"{p}video-views": 4,
        f"{p}video-interactions": 4,
        f"{p}creator-profiles": 4,
        f"{p}reward-accruals": 4,
        f"{p}reward-settlements": 4,
        f"{p}suspicious-events": 4,
        f"{p}events-dlq": 4,
        f"{p}it-app-video-state-changelog": 4,
        f"{p}it-app-ticks": 4,
        f"{p}it-app-device-flags": 4,
        f"{p}it-app-device-views": 4,
        f"{p}it-app-device-state-changelog": 4,
    }
    configs = await configs_of(bootstrap, [f"{p}reward-settlements", f"{p}reward-accruals", f"{p}it-app-ticks"])
    assert configs[f"{p}reward-settlements"]["cleanup.policy"] == "delete"
    assert configs[f"{p}reward-settlements"]["retention.ms"] == "34560000000"  # 400 d
    assert configs[f"{p}reward-accruals"]["cleanup.policy"] == "compact"
    assert configs[f"{p}it-app-ticks"]["retention.ms"] == "3600000"  # 1 h

    again = await topics_admin.apply(bootstrap, plan, client_kwargs={})
    assert [s.action for s in again.topics] == ["ok"] * len(plan)
    assert f"summary: created 0, ok {len(plan)}, drift 0, errors 0" in topics_admin.format_report(again)


async def test_existing_interactions_with_another_partition_count_are_refused(
    bootstrap: str, topic_prefix: str, plan: TopicPlan
) -> None:
    await create(bootstrap, f"{topic_prefix}video-views", 4)
    await create(bootstrap, f"{topic_prefix}video-interactions", 6)
    with pytest.raises(TopicPlanError, match="must be co-partitioned"):
        await topics_admin.apply(bootstrap, plan, client_kwargs={})
    with pytest.raises(TopicPlanError, match="must be co-partitioned"):
        await topics_admin.plan(bootstrap, plan, client_kwargs={})
    # refused before creating anything
    assert set(await topics_under(bootstrap, topic_prefix)) == {
        f"{topic_prefix}video-views",
        f"{topic_prefix}video-interactions",
    }


async def test_wrong_partition_count_is_drift_and_left_alone(
    bootstrap: str, topic_prefix: str, plan: TopicPlan
) -> None:
    accruals = f"{topic_prefix}reward-accruals"
    await create(bootstrap, accruals, 2, {"cleanup.policy": "compact"})

    report = await topics_admin.apply(bootstrap, plan, client_kwargs={})

    drift = report.status(accruals)
    assert (drift.action, drift.messages) == ("drift", ["has 2 partitions, declared 4"])
    assert len(report.with_action("created")) == len(plan) - 1  # all but the pre-created one
    assert (await topics_under(bootstrap, topic_prefix))[accruals] == 2  # never altered
    row = rf"^{re.escape(accruals)} +drift +4 +1 +has 2 partitions, declared 4$"
    assert re.search(row, topics_admin.format_report(report), re.MULTILINE)
