"""The demo: loopback sinks (a real SMTP server and a signature-checking webhook
receiver), a synthetic population, a load submitted over HTTP with a progress
bar, and a summary read back from PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.user_prefs import PrefCommand
from engine import auth
from engine.client import Client
from engine.prefs_bus import run_commands
from engine.runtime import Engine
from infra.config import ChannelConfig, Config, ProviderConfig
from infra.tuning import with_provider_settings
from policy.prefs import Preference
from policy.types import UserProfile
from policy.validate import PreferencesPatch
from policy.windows import Window
from sandbox import SinkProcess

CATEGORIES = (("job_alerts", 0.5), ("application_updates", 0.3), ("marketing", 0.2))


DEMO_TWILIO_ACCOUNT = "AC" + "de" * 16  # the demo's own: only its loopback server accepts it
DEMO_TWILIO_TOKEN = "demo-twilio-token"


class Sinks:
    """The loopback servers the demo points the engine at, each in its own process
    (started and stopped with the engine): an SMTP server and a webhook receiver
    for the channels the profile configures, and -- for SMS, voice and push when
    the profile has none of its own -- Twilio's and FCM's APIs (the channels are
    added to the config pointed at them)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.smtp = SinkProcess("smtp") if "email" in cfg.enabled_channels() else None
        secret = self._webhook_secret(cfg)
        self.webhook = SinkProcess("webhook", secret=secret) if secret else None
        self.twilio = (SinkProcess("twilio", secret=DEMO_TWILIO_TOKEN, account=DEMO_TWILIO_ACCOUNT)
                       if not {"sms", "voice"} & set(cfg.channels) else None)
        self.fcm = None
        if "push" not in cfg.channels:
            from sandbox.fcm import make_service_account
            self.fcm = SinkProcess("fcm", account=make_service_account("tidings-demo"))

    @staticmethod
    def _webhook_secret(cfg: Config) -> str | None:
        ch = cfg.channels.get("webhook")
        if ch is None or not ch.providers or "webhook" not in cfg.enabled_channels():
            return None
        return ch.providers[0].settings.get("secret")

    def _all(self) -> list[SinkProcess]:
        return [s for s in (self.smtp, self.webhook, self.twilio, self.fcm) if s is not None]

    async def start(self) -> Config:
        """Start them and return the config pointed at their ports."""
        started = await asyncio.gather(*(asyncio.to_thread(s.start) for s in self._all()), return_exceptions=True)
        failed = next((e for e in started if isinstance(e, BaseException)), None)
        if failed is not None:
            await self.stop()  # those that did start
            raise failed
        cfg = self.cfg
        if self.smtp is not None:
            cfg = with_provider_settings(cfg, "email", host="127.0.0.1", port=self.smtp.port)
        if self.webhook is not None:
            cfg = with_provider_settings(cfg, "webhook", url=self.webhook.url)
        added = {}
        if self.twilio is not None:
            twilio = {"account_sid": DEMO_TWILIO_ACCOUNT, "auth_token": DEMO_TWILIO_TOKEN, "from": "+15005550006",
                      "base_url": self.twilio.base_url}
            added["sms"] = ChannelConfig(providers=[ProviderConfig(name="twilio-local", type="twilio_sms",
                                                                   settings=twilio)])
            added["voice"] = ChannelConfig(providers=[ProviderConfig(name="twilio-voice-local", type="twilio_voice",
                                                                     settings=twilio)])
        if self.fcm is not None:
            account = {**self.fcm.account, "token_uri": f"{self.fcm.base_url}/token"}
            added["push"] = ChannelConfig(providers=[ProviderConfig(name="fcm-local", type="fcm", settings={
                "service_account": account, "base_url": self.fcm.base_url})])
        return msgspec.structs.replace(cfg, channels={**cfg.channels, **added})

    def stats(self) -> dict:
        return {name: (sink.stats() if sink else {}) for name, sink in
                (("smtp", self.smtp), ("webhook", self.webhook), ("twilio", self.twilio), ("fcm", self.fcm))}

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self._all()))


def population(users: int, seed: int = 7, prefix: str = "demo-") -> list[UserProfile]:
    """A realistic mix: most users keep the defaults; ~15% have marketing email
    off, ~5% job alerts off everywhere, ~3% have no email address."""
    rng = random.Random(seed)
    out = []
    for i in range(users):
        uid = f"{prefix}{i:06d}"
        addresses = {} if rng.random() < 0.03 else {"email": f"{uid}@example.test"}
        outs = []
        if rng.random() < 0.15:
            outs.append("email:marketing")
        if rng.random() < 0.05:
            outs.append("*:job_alerts")
        out.append(UserProfile(user_id=uid, addresses=addresses, opt_outs=outs,
                               timezone=rng.choice(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"])))
    return out


def preference_mix(users: int, seed: int = 5, prefix: str = "demo-") -> list[PrefCommand]:
    """Preferences beyond opt-outs for ~10% of the population: a daily job-alert
    digest on email (~5%) and quiet hours from 22:00 to 07:00 in their zone (~5%)."""
    rng = random.Random(seed)
    out = []
    for i in range(users):
        roll = rng.random()
        if roll < 0.05:
            rows = [Preference(channel="email", category="job_alerts", frequency="daily")]
        elif roll < 0.10:
            rows = [Preference(quiet_hours=[Window(start="22:00", end="07:00")])]
        else:
            continue
        out.append(PrefCommand(user_id=f"{prefix}{i:06d}", patch=PreferencesPatch(set=rows), source="demo",
                               actor="demo"))
    return out


def requests(count: int, users: int, run: str, seed: int = 11, prefix: str = "demo-",
             channels: tuple[str, ...] = ("email", "webhook")) -> list[dict]:
    """``count`` notifications over the population, categories mixed as CATEGORIES."""
    rng = random.Random(seed)
    cats, weights = zip(*CATEGORIES, strict=True)
    out = []
    for i in range(count):
        cat = rng.choices(cats, weights)[0]
        out.append({
            "user_id": f"{prefix}{rng.randrange(users):06d}", "category": cat, "channels": list(channels),
            "idempotency_key": f"{run}-{i}",
            "content": {"subject": f"[{cat}] update #{i}", "text": f"Hello! This is notification {i}.",
                        "html": f"<p>Hello! This is notification <b>{i}</b>.</p>"},
        })
    return out


def devices(people: list[UserProfile], seed: int = 13) -> tuple[list[UserProfile], list[PrefCommand]]:
    """~60% of ``people`` have the app (an FCM token), ~40% a phone number, and
    half of those agreed to SMS and voice: the profiles with those addresses,
    and the consents as preference commands."""
    rng = random.Random(seed)
    out, consents = [], []
    for i, p in enumerate(people):
        addresses = dict(p.addresses)
        if rng.random() < 0.6:
            addresses["push"] = f"fcm-{p.user_id}"
        if rng.random() < 0.4:
            addresses["sms"] = addresses["voice"] = f"+1{2_000_000_000 + i}"
            if rng.random() < 0.5:
                consents.append(PrefCommand(user_id=p.user_id, source="demo", actor="demo", patch=PreferencesPatch(
                    consent={"sms": "granted", "voice": "granted"})))
        out.append(msgspec.structs.replace(p, addresses=addresses))
    return out, consents


def demo_requests(count: int, users: int, run: str, seed: int = 17,
                  enabled: frozenset[str] | None = None) -> list[dict]:
    """The demo's load: ``requests`` on email and webhook, except ~12% recruiter
    messages to the app (push and the in-app inbox), ~5% interview invitations
    by push or, for users without the app, by SMS (``fallback``), and ~1%
    critical security alerts by email and phone call. A kind whose channels are
    not all ``enabled`` stays a job alert; a fallback channel that is not is
    left out."""
    kinds = (
        (0.12, {"category": "messages", "channels": ["push", "in_app"],
                "content": {"subject": "New message", "text": "A recruiter wrote to you about a role."}}),
        (0.17, {"category": "application_updates", "channels": ["push"], "fallback": ["sms"],
                "content": {"subject": "Interview invitation", "text": "Acme would like to interview you."}}),
        (0.18, {"category": "security", "channels": ["email", "voice"], "priority": "critical",
                "content": {"subject": "New sign-in",
                            "text": "Someone signed in to your account from a new device."}}),
    )
    rng = random.Random(seed)
    out = requests(count, users, run)
    for r in out:
        roll = rng.random()
        kind = next((k for below, k in kinds if roll < below), None)
        if kind is None or (enabled is not None and not set(kind["channels"]) <= enabled):
            continue
        r.update(kind)
        if enabled is not None and "fallback" in kind:
            r["fallback"] = [c for c in kind["fallback"] if c in enabled]
    return out


async def submit_all(url: str, reqs: list[dict], batch: int = 500, concurrency: int = 4,
                     headers: dict[str, str] | None = None) -> list[str]:
    """Submit ``reqs`` through the Python client, ``batch`` per request; their ids."""
    ids: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    async with Client(url, headers=headers) as tidings:
        async def one(chunk):
            async with gate:
                ids.extend(n.id for n in await tidings.send(*chunk))
        await asyncio.gather(*(one(reqs[i:i + batch]) for i in range(0, len(reqs), batch)))
    return ids


SUMMARY_SQL = """
SELECT channel, status, reason, count(*) AS n FROM delivery_tracking
WHERE notification_id = ANY($1::uuid[]) GROUP BY 1, 2, 3 ORDER BY 1, 2, 4 DESC
"""
TIMING_SQL = """
SELECT count(*) AS rows,
       extract(epoch FROM max(completed_at) - min(accepted_at)) AS wall_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - accepted_at)) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - accepted_at)) AS p99
FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])
"""


async def watch_rows(pool, expected: int, timeout_s: float, console: Console, label: str = "delivering",
                     ids: list[str] | None = None, parent: str | None = None,
                     written: Callable[[], Awaitable[int]] | None = None) -> int:
    """A progress bar over tracking rows (all of them, those of ``ids``, or the
    recipients of broadcast ``parent``) until ``expected`` are recorded or
    ``timeout_s`` passes; returns the count seen.

    ``written``: the rows the engine has written since the watch began, by its
    own count (the Recorder's). The bar follows it, and the table is counted
    only once it reaches ``expected`` (and every 30 s, in case it restarted): counting a broadcast's rows scans them
    (without a visibility map, every heap page), and in a 1M-user fan-out the
    polls took a sixth of a PostgreSQL backend from the run they measured."""
    query, args = "SELECT count(*) FROM delivery_tracking", ()
    if ids is not None:
        query, args = query + " WHERE notification_id = ANY($1::uuid[])", (ids,)
    elif parent is not None:
        query, args = query + " WHERE parent_id = $1::uuid", (parent,)
    done = 0
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("rows", total=expected)
        started = time.monotonic()
        deadline = started + timeout_s
        counted_at = started
        while done < expected and time.monotonic() < deadline:
            # the table every 30 s all the same: a Recorder restarted mid-run counts from 0
            if (written is not None and time.monotonic() - counted_at < 30
                    and (so_far := await written()) < expected):
                bar.update(task, completed=max(done, so_far))
                await asyncio.sleep(0.25)
                continue
            done = await pool.fetchval(query, *args)
            counted_at = time.monotonic()
            bar.update(task, completed=done)
            if done < expected:
                await asyncio.sleep(poll_interval(done, expected, time.monotonic() - started))
    if written is not None and done < expected:  # timed out following the counter: the table says
        done = await pool.fetchval(query, *args)
    return done


def poll_interval(done: int, expected: int, elapsed_s: float) -> float:
    """How long to wait before counting again: a quarter of the time the rest
    should take at the rate so far, between 0.25 and 2 s. The count scans the
    tracking table, a million rows at the end of a fan-out: every 0.25 s it took
    a third of a PostgreSQL backend from the run it measures. The figures come
    from the rows' own timestamps, so a later poll does not change them."""
    if done <= 0 or elapsed_s <= 0:
        return 0.25
    left_s = (expected - done) / (done / elapsed_s)
    return min(2.0, max(0.25, left_s / 4))


async def run(engine: Engine, http_url: str, sinks: Sinks, *, count: int, users: int,
              console: Console | None = None, timeout_s: float = 600) -> dict:
    console = console or Console()
    console.print(f"[bold]Seeding {users:,} users[/bold] through their UserShards (~10% with a daily digest "
                  "or quiet hours) …")
    people, consents = devices(population(users))
    for i in range(0, len(people), 1000):
        await engine.save_profiles(people[i:i + 1000], "demo")
    mix = preference_mix(users) + consents
    for i in range(0, len(mix), 1000):
        await run_commands(engine, mix[i:i + 1000])
    run_id = f"demo-{int(time.time())}"
    reqs = demo_requests(count, users, run_id, enabled=engine.cfg.enabled_channels())
    expected = sum(len(r["channels"]) for r in reqs)  # fallback channels add rows of their own
    console.print(f"[bold]Submitting {count:,} notifications[/bold] over HTTP ({http_url}) …")
    started = time.monotonic()
    key = auth.read_admin_key(engine.cfg.engine.home)
    ids = await submit_all(http_url, reqs, headers={"Authorization": f"Bearer {key}"} if key else None)
    console.print(f"accepted {len(ids):,} in {time.monotonic() - started:.1f}s (202 after the JetStream ack)")
    done = await watch_rows(engine.pool, expected, timeout_s, console, ids=ids)
    done = await settled(engine.pool, ids, done)
    summary = await summarize(engine, ids)
    summary["rows"], summary["expected_rows"] = done, expected
    await asyncio.sleep(0.5)  # the sinks write their counts every quarter second
    summary["sinks"] = sinks.stats()
    print_summary(console, summary, engine)
    return summary


async def settled(pool, ids: list[str], seen: int, quiet_s: float = 1.0) -> int:
    """The row count once it has not changed for ``quiet_s`` (fallback rows may
    still be arriving when the expected count is reached)."""
    while True:
        await asyncio.sleep(quiet_s)
        now = await pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])",
                                  ids)
        if now == seen:
            return now
        seen = now


async def summarize(engine: Engine, ids: list[str]) -> dict:
    rows = await engine.pool.fetch(SUMMARY_SQL, ids)
    timing = await engine.pool.fetchrow(TIMING_SQL, ids)
    wall = float(timing["wall_s"] or 0)
    return {
        "outcomes": [dict(r) for r in rows],
        "notifications": len(ids),
        "wall_s": wall,
        "per_s": len(ids) / wall if wall else 0.0,
        "p50_ms": float(timing["p50"] or 0) * 1000,
        "p99_ms": float(timing["p99"] or 0) * 1000,
    }


def fallback_note(s: dict) -> str:
    extra = s["rows"] - s["expected_rows"]
    return f", and {extra:,} on fallback channels" if extra > 0 else ""


def print_summary(console: Console, s: dict, engine: Engine) -> None:
    table = Table(title="Outcomes per channel")
    for col in ("channel", "status", "reason", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for r in s["outcomes"]:
        table.add_row(r["channel"], r["status"], r["reason"], f"{r['n']:,}")
    console.print(table)
    console.print(
        f"{s['notifications']:,} notifications ({min(s['rows'], s['expected_rows']):,}/{s['expected_rows']:,} "
        f"channel outcomes recorded{fallback_note(s)}) "
        f"in {s['wall_s']:.1f}s: [bold]{s['per_s']:,.0f} notifications/s[/bold], "
        f"accept→recorded p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms")
    got = s["sinks"]
    w, tw, fcm = got["webhook"], got["twilio"], got["fcm"]
    console.print(f"SMTP server received {got['smtp'].get('count', 0):,} emails; webhook receiver accepted "
                  f"{w.get('received', 0):,} (signature failures {w.get('bad_signatures', 0)}, "
                  f"repeated delivery ids {w.get('duplicates', 0)})")
    if tw or fcm:
        console.print(f"Twilio API received {tw.get('messages', 0):,} SMS and {tw.get('calls', 0):,} calls; "
                      f"FCM API {fcm.get('requests', 0):,} push messages")
    dash = engine.ray_info.get("dashboard")
    if dash:
        console.print(f"Ray dashboard: [link]{dash}[/link]  (actors: Ingestor, UserShard, ChannelShard, Recorder, Scheduler)")
