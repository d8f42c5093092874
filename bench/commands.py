"""The ``tidings`` commands this package adds (entry-point group
``tidings.commands``, see ``engine.cli.main``): ``demo`` and ``bench``. The
engine's CLI finds them installed; it never imports this package."""

from __future__ import annotations

import argparse


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="loopback servers + the engine + a demo load and its summary "
                                       "(--serve: keep serving afterwards)")
    demo.add_argument("--port", type=int, help="HTTP port (default from config: 8080)")
    demo.add_argument("--count", type=int, default=20_000, help="demo notifications (0: none, just serve)")
    demo.add_argument("--users", type=int, default=5_000, help="demo users")
    demo.add_argument("--serve", action="store_true", help="keep serving after the summary, until Ctrl-C")
    demo.set_defaults(run=cmd_demo)


async def cmd_demo(cfg, args) -> int:
    from bench.demo import Sinks, run
    from engine.cli.common import console, serving, until_stopped

    sinks = Sinks(cfg)
    try:
        cfg = await sinks.start()
        async with serving(cfg, args.port) as s:
            if args.count > 0:
                summary = await until_stopped(
                    run(s.engine, s.url, sinks, count=args.count, users=args.users, console=console), s.stop)
                if summary is None:
                    return 130
                if summary["rows"] < summary["expected_rows"]:
                    console.print("[red]demo did not finish: some outcomes were not recorded in time[/red]")
                    return 1
            if args.serve:
                console.print("Serving; Ctrl-C to stop.")
                await s.stop.wait()
        return 0
    finally:
        await sinks.stop()


HARNESSES = ("e2e", "capacity", "prefs", "channels", "auth", "faults", "hop", "sendtime", "channelchoice")


def add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="load harness: `bench e2e …`, `bench capacity --rate R --p99 MS`, "
                                         "`bench prefs`, `bench channels`, `bench auth`, `bench faults`, `bench hop`, "
                                         "`bench sendtime`")
    bench.add_argument("what", choices=HARNESSES)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that harness (see `tidings bench e2e -h`)")
    bench.set_defaults(main=run_bench)


def run_bench(args) -> int:
    """The harnesses parse their own options and run their own loop."""
    from bench import auth, capacity, channelchoice, channels, e2e, faults, hop, prefs, sendtime
    return {"e2e": e2e.main, "capacity": capacity.main, "prefs": prefs.main, "channels": channels.main,
            "auth": auth.main, "faults": faults.main, "hop": hop.main, "sendtime": sendtime.main,
            "channelchoice": channelchoice.main}[args.what](args.rest)
