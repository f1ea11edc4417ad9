"""`stream-app topics plan|apply` (SPEC §2): reads the topic declarations in topics/topics.toml, compares them with
the broker, creates what is missing and reports drift. It never deletes or alters a topic.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from stream_app.domain.errors import BrokerError, TopicPlanError
from stream_app.domain.events import InputTopic, OutputTopic

DEFAULT_TOPICS_FILE = Path(__file__).resolve().parents[2] / "topics" / "topics.toml"
DEFAULT_APP_ID = "creator-rewards"
# Used only when topics.toml has no [defaults] replication_factor: what a production cluster expects.
DEFAULT_REPLICATION_FACTOR = 3
APP_ID_PLACEHOLDER = "{app_id}"
# SPEC §2: one video must live in the same partition of both event topics.
CO_PARTITIONED = (InputTopic.VIEWS.value, InputTopic.INTERACTIONS.value)
REQUIRED_TOPICS = tuple(t.value for t in InputTopic) + tuple(t.value for t in OutputTopic)
# Kafka's own rule for topic names. Checked here because some brokers (tansu) accept any name.
_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_TOPIC_KEYS = frozenset({"partitions", "partitions_like", "replication_factor", "config"})
_TOPIC_ALREADY_EXISTS = 36

Action = Literal["create", "created", "ok", "drift", "error"]


# ---- the plan (pure) ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it should exist on the broker, its name already prefixed (and {app_id} substituted)."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    # The name as written in topics.toml (no prefix, {app_id} kept): how code and messages refer to a topic.
    declared_as: str = ""
    # Full name of the topic whose partition count this one follows (co-partitioned with it), if any.
    partitions_like: str | None = None


class TopicPlan(list[TopicSpec]):
    """Every topic the product and its worker need, in declaration order."""

    def named(self, declared_as: str) -> TopicSpec | None:
        return next((spec for spec in self if spec.declared_as == declared_as), None)

    def co_partition_groups(self) -> list[list[TopicSpec]]:
        """Topics that must keep one partition count: the two event topics and each topic's `partitions_like`."""
        groups: dict[str, list[TopicSpec]] = {}
        views = self.named(CO_PARTITIONED[0])
        for spec in self:
            root = spec.partitions_like or spec.name
            if views is not None and spec.declared_as in CO_PARTITIONED:
                root = views.name
            groups.setdefault(root, []).append(spec)
        return [group for group in groups.values() if len(group) > 1]


def _positive_int(value: object, what: str) -> int:
    # bool is an int subclass in Python; `partitions = true` is a typo, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TopicPlanError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _config_value(value: object, what: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise TopicPlanError(f"{what} must be a string, integer or boolean, got {value!r}")


def _table(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TopicPlanError(f"{what} must be a table, got {value!r}")
    return value


def _resolve_default_file() -> Path:
    if DEFAULT_TOPICS_FILE.is_file():
        return DEFAULT_TOPICS_FILE
    # An installed (non-editable) package has no topics/ beside it: the repository checkout is the cwd then.
    in_cwd = Path.cwd() / "topics" / "topics.toml"
    if in_cwd.is_file():
        return in_cwd
    raise TopicPlanError(f"no topic declarations at {DEFAULT_TOPICS_FILE} or {in_cwd}: pass the file explicitly")


def load_topic_plan(
    path: Path | None = None,
    *,
    prefix: str = "",
    app_id: str = DEFAULT_APP_ID,
    replication_factor: int | None = None,
) -> TopicPlan:
    """Parse and validate topic declarations (default: topics/topics.toml) into a TopicPlan.

    `prefix` (TOPIC_PREFIX) is prepended to every name, internal ones after {app_id} substitution;
    `replication_factor`, when given, overrides every declared one. TopicPlanError says what is wrong.
    """
    source = path if path is not None else _resolve_default_file()
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopicPlanError(f"cannot read topic declarations {source}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopicPlanError(f"{source} is not valid TOML: {exc}") from None
    if not app_id:
        raise TopicPlanError("APP_ID must not be empty: it names the worker's internal topics")
    try:
        return _build_plan(raw, prefix=prefix, app_id=app_id, replication_factor=replication_factor)
    except TopicPlanError as exc:
        raise TopicPlanError(f"{source}: {exc}") from None


def _build_plan(raw: Mapping[str, Any], *, prefix: str, app_id: str, replication_factor: int | None) -> TopicPlan:
    unknown = set(raw) - {"defaults", "topics", "internal"}
    if unknown:
        raise TopicPlanError(f"unknown section(s) {sorted(unknown)}: expected defaults, topics, internal")
    defaults = _table(raw.get("defaults", {}), "[defaults]")
    if set(defaults) - {"replication_factor"}:
        raise TopicPlanError(f"unknown key(s) in [defaults]: {sorted(set(defaults) - {'replication_factor'})}")
    default_rf = _positive_int(
        defaults.get("replication_factor", DEFAULT_REPLICATION_FACTOR), "[defaults] replication_factor"
    )
    if replication_factor is not None:
        _positive_int(replication_factor, "replication factor")
    topics = _table(raw.get("topics", {}), "[topics]")
    internal = _table(raw.get("internal", {}), "[internal]")

    # Partition counts of [topics] entries declared directly, for partitions_like to point at.
    direct_partitions: dict[str, int] = {}
    for declared, body in topics.items():
        entry = _table(body, f"topic {declared!r}")
        if "partitions" in entry:
            direct_partitions[declared] = _positive_int(entry["partitions"], f"topic {declared!r} partitions")

    plan = TopicPlan()
    for section, is_internal in ((topics, False), (internal, True)):
        for declared, body in section.items():
            entry = _table(body, f"topic {declared!r}")
            where = f"{'internal' if is_internal else 'topic'} {declared!r}"
            unknown_keys = set(entry) - _TOPIC_KEYS
            if unknown_keys:
                raise TopicPlanError(f"{where}: unknown key(s) {sorted(unknown_keys)}")
            partitions, like = _partitions_of(entry, where, direct_partitions)
            name = prefix + (declared.replace(APP_ID_PLACEHOLDER, app_id) if is_internal else declared)
            if not _LEGAL_NAME.fullmatch(name) or name in {".", ".."}:
                raise TopicPlanError(f"{where}: {name!r} is not a legal Kafka topic name ([A-Za-z0-9._-], 1-249)")
            config = {
                str(key): _config_value(value, f"{where} config {key!r}")
                for key, value in _table(entry.get("config", {}), f"{where} config").items()
            }
            rf = replication_factor or _positive_int(
                entry.get("replication_factor", default_rf), f"{where} replication_factor"
            )
            plan.append(
                TopicSpec(
                    name=name,
                    partitions=partitions,
                    replication_factor=rf,
                    config=config,
                    internal=is_internal,
                    declared_as=declared,
                    partitions_like=None if like is None else prefix + like,
                )
            )
    _validate(plan)
    return plan


def _partitions_of(entry: Mapping[str, Any], where: str, direct: Mapping[str, int]) -> tuple[int, str | None]:
    has_count, has_like = "partitions" in entry, "partitions_like" in entry
    if has_count == has_like:
        raise TopicPlanError(f"{where}: declare exactly one of partitions or partitions_like")
    if has_count:
        return _positive_int(entry["partitions"], f"{where} partitions"), None
    like = entry["partitions_like"]
    if like not in direct:
        raise TopicPlanError(f"{where}: partitions_like {like!r} is not a [topics] entry with its own partitions")
    return direct[like], str(like)


def _validate(plan: TopicPlan) -> None:
    seen: set[str] = set()
    for spec in plan:
        if spec.name in seen:
            raise TopicPlanError(f"topic {spec.name!r} is declared twice")
        seen.add(spec.name)
    missing = [name for name in REQUIRED_TOPICS if plan.named(name) is None]
    if missing:
        raise TopicPlanError(f"SPEC §2 topic(s) not declared: {', '.join(missing)}")
    views, interactions = (plan.named(name) for name in CO_PARTITIONED)
    assert views is not None and interactions is not None  # both are REQUIRED_TOPICS
    if views.partitions != interactions.partitions:
        raise TopicPlanError(
            f"{views.declared_as} declares {views.partitions} partitions and {interactions.declared_as} "
            f"{interactions.partitions}: the input event topics must be co-partitioned (equal counts)"
        )


# ---- comparing with the broker -----------------------------------------------------------------------------------


@dataclass
class TopicStatus:
    """What plan/apply found (and did) for one declared topic."""

    spec: TopicSpec
    action: Action
    # The replication factor used to create it: the declared one, lowered to the cluster's broker count.
    replication_factor: int
    messages: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class PlanReport:
    bootstrap: str
    broker_count: int
    applied: bool
    topics: list[TopicStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def with_action(self, *actions: Action) -> list[TopicStatus]:
        return [status for status in self.topics if status.action in actions]

    @property
    def has_drift(self) -> bool:
        return bool(self.with_action("drift"))

    @property
    def has_errors(self) -> bool:
        return bool(self.with_action("error"))

    def status(self, name: str) -> TopicStatus:
        """The status of the topic with this full (prefixed) name."""
        for status in self.topics:
            if status.name == name:
                return status
        raise KeyError(name)


@dataclass(frozen=True)
class _ExistingTopic:
    partitions: int
    replication_factor: int


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, client_kwargs: Mapping[str, Any]) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="stream-app-topics", **client_kwargs)
    try:
        try:
            await admin.start()
        except KafkaError as exc:
            raise BrokerError(f"cannot reach the broker at {bootstrap}: {exc}") from None
        try:
            yield admin
        except KafkaError as exc:
            raise BrokerError(f"the broker at {bootstrap} failed a topic admin request: {exc}") from None
    finally:
        await admin.close()


async def _existing_topics(admin: AIOKafkaAdminClient) -> dict[str, _ExistingTopic]:
    # Metadata for ALL topics, never for named ones: naming a missing topic auto-creates it on tansu (and on any
    # broker with auto.create.topics.enable), which would turn `plan` into an accidental `apply` with defaults.
    found: dict[str, _ExistingTopic] = {}
    for topic in await admin.describe_topics():
        if topic["error_code"] != 0:
            continue
        partitions = topic["partitions"]
        replicas = min((len(p["replicas"]) for p in partitions), default=0)
        found[topic["topic"]] = _ExistingTopic(partitions=len(partitions), replication_factor=replicas)
    return found


async def _topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str] | str]:
    """Config values per topic, or an error text when the broker would not tell."""
    if not names:
        return {}
    # configs=None asks for every key: tansu 0.6 drops the connection when asked for named keys.
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    found: dict[str, dict[str, str] | str] = {}
    for response in responses:
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries), in every version
            error_code, error_message, _, name, entries = resource[:5]
            if error_code != 0:
                found[name] = f"{for_code(error_code).__name__}: {error_message}"
            else:
                # entries are (name, value, ...); a null value is a sensitive or unset key
                found[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return found


def check_co_partitioning(plan: TopicPlan, existing: Mapping[str, int]) -> None:
    """Refuse (TopicPlanError) a cluster whose event topics differ in partition count, and any creation that would
    give a topic another count than an existing member of its co-partitioned group. `existing`: name -> count.
    """
    views, interactions = (plan.named(name) for name in CO_PARTITIONED)
    if views is not None and interactions is not None and views.name in existing and interactions.name in existing:
        have_views, have_interactions = existing[views.name], existing[interactions.name]
        if have_views != have_interactions:
            raise TopicPlanError(
                f"{views.name} has {have_views} partitions and {interactions.name} has {have_interactions} on the "
                "broker: the input event topics must be co-partitioned (equal counts). topics apply never alters "
                "or deletes topics; recreate one of them (or use a new TOPIC_PREFIX) and replay"
            )
    for group in plan.co_partition_groups():
        present = [(spec.name, existing[spec.name]) for spec in group if spec.name in existing]
        for spec in group:
            if spec.name in existing:
                continue
            for other, count in present:
                if count != spec.partitions:
                    raise TopicPlanError(
                        f"creating {spec.name} with {spec.partitions} partitions would break co-partitioning with "
                        f"{other}, which has {count} on the broker: declare {count} partitions in topics.toml"
                    )


def _drift_messages(
    spec: TopicSpec, have: _ExistingTopic, configs: dict[str, str] | str | None, replication_factor: int
) -> list[str]:
    messages: list[str] = []
    if have.partitions != spec.partitions:
        messages.append(f"has {have.partitions} partitions, declared {spec.partitions}")
    if have.replication_factor < replication_factor:
        messages.append(f"replication factor {have.replication_factor}, declared {replication_factor}")
    if isinstance(configs, str) or configs is None:
        messages.append(f"configs not readable ({configs or 'no answer'})")
        return messages
    for key, want in spec.config.items():
        got = configs.get(key)
        if got is None:
            messages.append(f"{key} not set, declared {want}")
        elif got != want:
            messages.append(f"{key}={got}, declared {want}")
    return messages


async def _compare(admin: AIOKafkaAdminClient, bootstrap: str, topic_plan: TopicPlan) -> PlanReport:
    cluster = await admin.describe_cluster()
    broker_count = len(cluster["brokers"])
    if broker_count < 1:
        raise BrokerError(f"the broker at {bootstrap} lists no brokers in its cluster metadata")
    existing = await _existing_topics(admin)
    check_co_partitioning(topic_plan, {name: topic.partitions for name, topic in existing.items()})
    configs = await _topic_configs(admin, [spec.name for spec in topic_plan if spec.name in existing])

    report = PlanReport(bootstrap=bootstrap, broker_count=broker_count, applied=False)
    lowered = sorted({spec.replication_factor for spec in topic_plan if spec.replication_factor > broker_count})
    if lowered:
        report.notes.append(
            f"replication factor lowered from {', '.join(map(str, lowered))} to {broker_count}: "
            f"the cluster has {broker_count} broker{'s' if broker_count > 1 else ''}"
        )
    for spec in topic_plan:
        rf = min(spec.replication_factor, broker_count)
        have = existing.get(spec.name)
        if have is None:
            report.topics.append(TopicStatus(spec, "create", rf))
            continue
        messages = _drift_messages(spec, have, configs.get(spec.name), rf)
        report.topics.append(TopicStatus(spec, "drift" if messages else "ok", rf, messages))
    return report


async def plan(bootstrap: str, plan: TopicPlan, *, client_kwargs: Mapping[str, Any] | None = None) -> PlanReport:
    """Compare the plan with the broker without changing anything: each topic is create, ok or drift."""
    async with _admin(bootstrap, client_kwargs or {}) as admin:
        return await _compare(admin, bootstrap, plan)


async def apply(bootstrap: str, plan: TopicPlan, *, client_kwargs: Mapping[str, Any] | None = None) -> PlanReport:
    """Create every missing topic of the plan; report drift in the others. Never deletes or alters; idempotent.

    A topic the broker refuses to create (for example a config key it does not know) is reported with action
    "error" and the broker's reason; the other topics are still created.
    """
    async with _admin(bootstrap, client_kwargs or {}) as admin:
        report = await _compare(admin, bootstrap, plan)
        report.applied = True
        to_create = report.with_action("create")
        if not to_create:
            return report
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.spec.partitions, s.replication_factor, topic_configs=dict(s.spec.config))
                for s in to_create
            ]
        )
        outcome = {row[0]: (row[1], row[2] if len(row) > 2 else None) for row in response.topic_errors}
        for status in to_create:
            error_code, error_message = outcome.get(status.name, (0, None))
            if error_code == 0:
                status.action = "created"
            elif error_code == _TOPIC_ALREADY_EXISTS:
                # Another client created it between our look and our create: it exists, but unverified.
                status.action = "ok"
                status.messages.append("created concurrently by another client; run `topics plan` to compare")
            else:
                status.action = "error"
                reason = error_message or "no message"
                status.messages.append(f"broker refused to create it: {for_code(error_code).__name__}: {reason}")
        return report


# ---- the worker's start-up check (SPEC §4) --------------------------------------------------------------------------


@dataclass(frozen=True)
class RequiredTopic:
    """A topic a worker reads or writes, its name in full, and the topic whose partition count it must have."""

    name: str
    # Full name of the topic it is co-partitioned with (its partition count must be that topic's), or None.
    co_partitioned_with: str | None = None


def required_by_plan(plan: TopicPlan) -> list[RequiredTopic]:
    """What a worker needs of the topics of a plan: each must exist, video-interactions must have the partition
    count of video-views, and each `partitions_like` topic that of the topic it names."""
    views = plan.named(CO_PARTITIONED[0])
    required = []
    for spec in plan:
        partner = spec.partitions_like
        if views is not None and spec.declared_as in CO_PARTITIONED[1:]:
            partner = views.name
        required.append(RequiredTopic(spec.name, partner))
    return required


def topology_problems(required: Iterable[RequiredTopic], existing: Mapping[str, int]) -> list[str]:
    """Why a worker must not start on these topics (`existing`: name -> partition count on the broker), one
    sentence per problem; empty when every required topic exists with the partition count it needs."""
    required = list(required)
    problems: list[str] = []
    missing = [topic.name for topic in required if topic.name not in existing]
    if missing:
        problems.append(f"missing topic{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    for topic in required:
        partner = topic.co_partitioned_with
        if partner is None or topic.name not in existing or partner not in existing:
            continue
        if existing[topic.name] != existing[partner]:
            problems.append(
                f"{topic.name} has {existing[topic.name]} partitions but {partner} has {existing[partner]}: "
                "they must be co-partitioned (equal counts)"
            )
    return problems


async def partition_counts_on_broker(
    bootstrap: str, *, client_kwargs: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """The partition count of every topic on the broker, from an all-topics request: asking for named topics
    would make a broker that auto-creates topics (tansu does) create the very topics being checked for."""
    async with _admin(bootstrap, client_kwargs or {}) as admin:
        return {name: topic.partitions for name, topic in (await _existing_topics(admin)).items()}


# ---- output --------------------------------------------------------------------------------------------------------


def format_report(report: PlanReport) -> str:
    """A table for the CLI: one row per topic, then notes and a summary line."""
    verb = "apply" if report.applied else "plan"
    plural = "s" if report.broker_count != 1 else ""
    lines = [f"topics {verb} against {report.bootstrap} ({report.broker_count} broker{plural})"]
    rows = [("TOPIC", "STATUS", "PARTITIONS", "RF", "DETAIL")]
    for status in report.topics:
        name = status.name + (" (internal)" if status.spec.internal else "")
        detail = "; ".join(status.messages)
        rows.append((name, status.action, str(status.spec.partitions), str(status.replication_factor), detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    lines = [line.rstrip() for line in lines]
    lines.extend(f"note: {note}" for note in report.notes)
    counts = {action: len(report.with_action(action)) for action in ("create", "created", "ok", "drift", "error")}
    if report.applied:
        summary = f"created {counts['created']}, ok {counts['ok']}, drift {counts['drift']}, errors {counts['error']}"
    else:
        summary = f"to create {counts['create']}, ok {counts['ok']}, drift {counts['drift']}"
    lines.append(f"summary: {summary}")
    if counts["drift"]:
        lines.append("drift is reported, never repaired: topics apply does not alter or delete existing topics")
    return "\n".join(lines)
