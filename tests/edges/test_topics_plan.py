"""Topic declarations as a plan (pure: no broker): parsing, prefix and {app_id} substitution, co-partitioning and
name checks, comparison against a fake admin client, and the CLI table.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stream_app.domain.errors import BrokerError, TopicPlanError
from stream_app.edges import topics_admin
from stream_app.edges.topics_admin import (
    PlanReport,
    TopicPlan,
    TopicSpec,
    TopicStatus,
    check_co_partitioning,
    format_report,
    load_topic_plan,
)

DAY_MS = 86_400_000
Write = Callable[[str], Path]


def declarations(*, views: int = 4, interactions: int = 4, extra: str = "", defaults: str = "") -> str:
    """A complete, valid topics.toml (every SPEC §2 topic plus two internal ones), with room for changes."""
    return f"""
[defaults]
replication_factor = 3
{defaults}
[topics.video-views]
partitions = {views}
config = {{ "cleanup.policy" = "delete", "retention.ms" = "604800000" }}
[topics.video-interactions]
partitions = {interactions}
config = {{ "cleanup.policy" = "delete", "retention.ms" = 604800000 }}
[topics.creator-profiles]
partitions = 2
config = {{ "cleanup.policy" = "compact" }}
[topics.reward-accruals]
partitions = 4
config = {{ "cleanup.policy" = "compact" }}
[topics.reward-settlements]
partitions = 4
[topics.suspicious-events]
partitions = 4
[topics.events-dlq]
partitions = 1
[internal."{{app_id}}-ticks"]
partitions_like = "video-views"
config = {{ "cleanup.policy" = "delete", "retention.ms" = "3600000" }}
[internal."{{app_id}}-profiles-changelog"]
partitions_like = "creator-profiles"
config = {{ "cleanup.policy" = "compact", "unclean.leader.election.enable" = false }}
{extra}
"""


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def _write(text: str) -> Path:
        path = tmp_path / "topics.toml"
        path.write_text(text)
        return path

    return _write


# ---- the shipped declarations ----------------------------------------------------------------------------------------


def test_shipped_declarations_cover_spec_section_2() -> None:
    plan = load_topic_plan()
    table = {spec.name: (spec.partitions, spec.config, spec.internal) for spec in plan}
    delete = "delete"
    assert table == {
        "video-views": (4, {"cleanup.policy": delete, "retention.ms": str(7 * DAY_MS)}, False),
        "video-interactions": (4, {"cleanup.policy": delete, "retention.ms": str(7 * DAY_MS)}, False),
        "creator-profiles": (4, {"cleanup.policy": "compact"}, False),
        "reward-accruals": (4, {"cleanup.policy": "compact"}, False),
        "reward-settlements": (4, {"cleanup.policy": delete, "retention.ms": str(400 * DAY_MS)}, False),
        "suspicious-events": (4, {"cleanup.policy": delete, "retention.ms": str(90 * DAY_MS)}, False),
        "events-dlq": (4, {"cleanup.policy": delete, "retention.ms": str(30 * DAY_MS)}, False),
        "creator-rewards-video-state-changelog": (4, {"cleanup.policy": "compact"}, True),
        "creator-rewards-ticks": (4, {"cleanup.policy": delete, "retention.ms": "3600000"}, True),
        "creator-rewards-device-flags": (4, {"cleanup.policy": delete, "retention.ms": str(DAY_MS)}, True),
        "creator-rewards-device-views": (4, {"cleanup.policy": delete, "retention.ms": str(DAY_MS)}, True),
        "creator-rewards-device-state-changelog": (4, {"cleanup.policy": "compact"}, True),
    }
    assert {spec.replication_factor for spec in plan} == {3}


def test_prefix_and_app_id_name_every_topic() -> None:
    plan = load_topic_plan(prefix="staging.", app_id="rewards-eu")
    assert [spec.name for spec in plan] == [
        "staging.video-views",
        "staging.video-interactions",
        "staging.creator-profiles",
        "staging.reward-accruals",
        "staging.reward-settlements",
        "staging.suspicious-events",
        "staging.events-dlq",
        "staging.rewards-eu-video-state-changelog",
        "staging.rewards-eu-ticks",
        "staging.rewards-eu-device-flags",
        "staging.rewards-eu-device-views",
        "staging.rewards-eu-device-state-changelog",
    ]
    ticks = plan.named("{app_id}-ticks")
    assert ticks is not None and ticks.partitions_like == "staging.video-views"


# ---- parsing -------------------------------------------------------------------------------------------------------


def test_partitions_like_copies_the_count_and_config_values_become_strings(write: Write) -> None:
    plan = load_topic_plan(write(declarations(views=8, interactions=8)), prefix="p-", app_id="a")
    ticks, changelog = plan.named("{app_id}-ticks"), plan.named("{app_id}-profiles-changelog")
    assert ticks == TopicSpec(
        name="p-a-ticks",
        partitions=8,
        replication_factor=3,
        config={"cleanup.policy": "delete", "retention.ms": "3600000"},
        internal=True,
        declared_as="{app_id}-ticks",
        partitions_like="p-video-views",
    )
    assert changelog is not None and changelog.partitions == 2
    assert changelog.config == {"cleanup.policy": "compact", "unclean.leader.election.enable": "false"}
    interactions = plan.named("video-interactions")
    assert interactions is not None and interactions.config["retention.ms"] == "604800000"  # TOML int -> str


@pytest.mark.parametrize(
    ("override", "per_topic", "expected"),
    [
        (None, "", {3}),  # [defaults]
        (1, "", {1}),  # --replication-factor wins everywhere
        (None, "replication_factor = 2\n", {2, 3}),  # a topic's own value wins over [defaults]
    ],
)
def test_replication_factor_precedence(write: Write, override: int | None, per_topic: str, expected: set[int]) -> None:
    dlq = "[topics.events-dlq]\npartitions = 1\n"
    text = declarations().replace(dlq, dlq + per_topic)
    plan = load_topic_plan(write(text), replication_factor=override)
    assert {spec.replication_factor for spec in plan} == expected


def test_co_partitioning_is_refused_in_the_plan(write: Write) -> None:
    with pytest.raises(TopicPlanError, match="video-views declares 4 partitions and video-interactions 6"):
        load_topic_plan(write(declarations(views=4, interactions=6)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # a product topic and an internal one meeting after {app_id} substitution
        ("[topics.creator-rewards-ticks]\npartitions = 4\n", "'creator-rewards-ticks' is declared twice"),
        ('[internal."creator-rewards-ticks"]\npartitions = 4\n', "'creator-rewards-ticks' is declared twice"),
    ],
)
def test_repeated_names_are_refused(write: Write, extra: str, message: str) -> None:
    with pytest.raises(TopicPlanError, match=message):
        load_topic_plan(write(declarations(extra=extra)))


def test_a_key_repeated_in_the_file_is_refused(write: Write) -> None:
    with pytest.raises(TopicPlanError, match="not valid TOML"):
        load_topic_plan(write(declarations(extra="[topics.video-views]\npartitions = 4\n")))


@pytest.mark.parametrize("bad", ["0", "-1", "true", '"4"', "2.0"])
def test_partitions_must_be_a_positive_integer(write: Write, bad: str) -> None:
    text = declarations().replace("[topics.events-dlq]\npartitions = 1", f"[topics.events-dlq]\npartitions = {bad}")
    with pytest.raises(TopicPlanError, match=r"partitions must be an integer >= 1"):
        load_topic_plan(write(text))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[topics.events-dlq]\npartitions = 1\n", ""), "SPEC §2 topic\\(s\\) not declared: events-dlq"),
        (("partitions = 1\n", "partition = 1\n"), r"unknown key\(s\) \['partition'\]"),
        (("partitions = 1\n", 'partitions = 1\npartitions_like = "video-views"\n'), "exactly one of partitions"),
        (('partitions_like = "creator-profiles"', 'partitions_like = "nope"'), "partitions_like 'nope' is not"),
        (("[defaults]", "[default]"), r"unknown section\(s\) \['default'\]"),
        (("replication_factor = 3", "replication_factor = 0"), "replication_factor must be an integer >= 1"),
        (('"{app_id}-ticks"', '"{app_id} ticks!"'), "'creator-rewards ticks!' is not a legal Kafka topic name"),
    ],
)
def test_bad_declarations_are_refused_with_a_reason(write: Write, change: tuple[str, str], message: str) -> None:
    old, new = change
    text = declarations()
    assert old in text
    with pytest.raises(TopicPlanError, match=message):
        load_topic_plan(write(text.replace(old, new, 1)))


@pytest.mark.parametrize(("prefix", "app_id"), [("bad prefix ", "creator-rewards"), ("", "a/b"), ("x" * 240, "a")])
def test_illegal_names_from_prefix_or_app_id_are_refused(write: Write, prefix: str, app_id: str) -> None:
    with pytest.raises(TopicPlanError, match="is not a legal Kafka topic name"):
        load_topic_plan(write(declarations()), prefix=prefix, app_id=app_id)


def test_missing_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(TopicPlanError, match="cannot read topic declarations"):
        load_topic_plan(tmp_path / "absent.toml")


# ---- co-partitioning against what exists -----------------------------------------------------------------------------


@pytest.fixture
def plan(write: Write) -> TopicPlan:
    return load_topic_plan(write(declarations()), prefix="p-", app_id="a")


@pytest.mark.parametrize(
    "existing",
    [
        {},
        {"p-video-views": 4, "p-video-interactions": 4},
        {"p-video-views": 4},  # the missing ones are created with 4: fine
        {"p-a-ticks": 3, "p-video-views": 4, "p-video-interactions": 4},  # an internal one off: drift, not refusal
        {"p-creator-profiles": 2},
    ],
)
def test_co_partitioning_accepts(plan: TopicPlan, existing: dict[str, int]) -> None:
    check_co_partitioning(plan, existing)


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        (
            {"p-video-views": 4, "p-video-interactions": 6},
            "p-video-views has 4 partitions and p-video-interactions has 6",
        ),
        (
            {"p-video-views": 8},
            "creating p-video-interactions with 4 partitions would break co-partitioning with p-video-views, "
            "which has 8",
        ),
        (
            {"p-video-interactions": 2},
            "creating p-video-views with 4 partitions would break co-partitioning with p-video-interactions, "
            "which has 2",
        ),
        ({"p-creator-profiles": 3}, "creating p-a-profiles-changelog with 2 partitions would break co-partitioning"),
    ],
)
def test_co_partitioning_refuses(plan: TopicPlan, existing: dict[str, int], message: str) -> None:
    with pytest.raises(TopicPlanError, match=message):
        check_co_partitioning(plan, existing)


# ---- plan / apply against a fake admin client ------------------------------------------------------------------------


class FakeAdmin:
    """Answers like aiokafka's AIOKafkaAdminClient (the bits topics_admin uses), from dicts."""

    def __init__(self, topics: dict[str, int], configs: dict[str, dict[str, str]], brokers: int = 1) -> None:
        self.topics, self.configs, self.brokers = topics, configs, brokers
        self.refuse: dict[str, tuple[int, str]] = {}
        self.created: list[Any] = []

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": n, "host": "h", "port": 9092} for n in range(self.brokers)]}

    async def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        assert topics is None, "naming topics in a metadata request auto-creates them"
        replicas = list(range(self.brokers))
        return [
            {"topic": name, "error_code": 0, "partitions": [{"partition": p, "replicas": replicas} for p in range(n)]}
            for name, n in self.topics.items()
        ]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        # (error_code, error_message, resource_type, resource_name, [(name, value, read_only, source, ...)])
        rows: list[tuple[Any, ...]] = [
            (0, None, 2, r.name, [(k, v, False, 5, False, []) for k, v in self.configs.get(r.name, {}).items()])
            for r in resources
        ]
        return [SimpleNamespace(resources=rows)]

    async def create_topics(self, new_topics: list[Any]) -> Any:
        self.created.extend(new_topics)
        errors = [(t.name, *self.refuse.get(t.name, (0, None))) for t in new_topics]
        return SimpleNamespace(topic_errors=errors)


def use(monkeypatch: pytest.MonkeyPatch, admin: FakeAdmin) -> None:
    @contextlib.asynccontextmanager
    async def fake(bootstrap: str, client_kwargs: dict[str, Any]) -> AsyncIterator[FakeAdmin]:
        yield admin

    monkeypatch.setattr(topics_admin, "_admin", fake)


async def test_apply_reports_a_refused_config_and_creates_the_rest(
    plan: TopicPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = FakeAdmin(topics={}, configs={}, brokers=2)
    admin.refuse["p-a-profiles-changelog"] = (40, "Unknown topic config name: unclean.leader.election.enable")
    admin.refuse["p-events-dlq"] = (36, "Topic with this name already exists.")
    use(monkeypatch, admin)
    report = await topics_admin.apply("b:9092", plan, client_kwargs={})
    assert [t.name for t in admin.created] == [spec.name for spec in plan]
    assert {t.replication_factor for t in admin.created} == {2}  # declared 3, two brokers
    assert report.notes == ["replication factor lowered from 3 to 2: the cluster has 2 brokers"]
    refused = report.status("p-a-profiles-changelog")
    assert (refused.action, refused.messages) == (
        "error",
        [
            "broker refused to create it: InvalidConfigurationError: "
            "Unknown topic config name: unclean.leader.election.enable"
        ],
    )
    assert report.status("p-events-dlq").action == "ok"
    assert len(report.with_action("created")) == len(plan) - 2
    assert report.has_errors and not report.has_drift


async def test_plan_reports_drift_per_declared_key_and_partitions(
    plan: TopicPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = FakeAdmin(
        topics={"p-video-views": 4, "p-video-interactions": 4, "p-reward-accruals": 2, "other-team-topic": 9},
        configs={
            "p-video-views": {"cleanup.policy": "delete", "retention.ms": "604800000", "segment.ms": "1"},
            "p-video-interactions": {"cleanup.policy": "compact"},
            "p-reward-accruals": {"cleanup.policy": "compact"},
        },
    )
    use(monkeypatch, admin)
    report = await topics_admin.plan("b:9092", plan, client_kwargs={})
    assert admin.created == []
    assert report.status("p-video-views").action == "ok"  # undeclared keys (segment.ms) are not drift
    assert report.status("p-video-interactions").messages == [
        "cleanup.policy=compact, declared delete",
        "retention.ms not set, declared 604800000",
    ]
    assert report.status("p-reward-accruals").messages == ["has 2 partitions, declared 4"]
    assert len(report.with_action("create")) == len(plan) - 3
    assert report.notes == ["replication factor lowered from 3 to 1: the cluster has 1 broker"]


async def test_apply_refuses_existing_inputs_that_break_co_partitioning(
    plan: TopicPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = FakeAdmin(topics={"p-video-views": 4, "p-video-interactions": 5}, configs={})
    use(monkeypatch, admin)
    with pytest.raises(TopicPlanError, match="must be co-partitioned"):
        await topics_admin.apply("b:9092", plan, client_kwargs={})
    assert admin.created == []


# ---- the CLI table -------------------------------------------------------------------------------------------------


def test_format_report_table() -> None:
    views = TopicSpec("video-views", 4, 3, {"cleanup.policy": "delete"}, declared_as="video-views")
    ticks = TopicSpec("cr-ticks", 4, 3, {}, internal=True, declared_as="{app_id}-ticks")
    accruals = TopicSpec("reward-accruals", 4, 3, {}, declared_as="reward-accruals")
    report = PlanReport(
        bootstrap="127.0.0.1:9092",
        broker_count=1,
        applied=True,
        topics=[
            TopicStatus(views, "ok", 1),
            TopicStatus(ticks, "created", 1),
            TopicStatus(
                accruals, "drift", 1, ["has 2 partitions, declared 4", "cleanup.policy not set, declared compact"]
            ),
        ],
        notes=["replication factor lowered from 3 to 1: the cluster has 1 broker"],
    )
    assert format_report(report) == "\n".join(
        [
            "topics apply against 127.0.0.1:9092 (1 broker)",
            "TOPIC                STATUS   PARTITIONS  RF  DETAIL",
            "video-views          ok       4           1",
            "cr-ticks (internal)  created  4           1",
            "reward-accruals      drift    4           1   "
            "has 2 partitions, declared 4; cleanup.policy not set, declared compact",
            "note: replication factor lowered from 3 to 1: the cluster has 1 broker",
            "summary: created 1, ok 1, drift 1, errors 0",
            "drift is reported, never repaired: topics apply does not alter or delete existing topics",
        ]
    )


async def test_unreachable_broker_is_a_broker_error(plan: TopicPlan) -> None:
    with pytest.raises(BrokerError, match=r"cannot reach the broker at 127\.0\.0\.1:1: KafkaConnectionError"):
        await topics_admin.plan("127.0.0.1:1", plan, client_kwargs={})
